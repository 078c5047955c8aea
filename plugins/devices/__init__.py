"""Sound devices: capture, playback and a null device, through sounddevice (PortAudio)."""
