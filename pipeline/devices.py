"""Sound devices through sounddevice/PortAudio, imported lazily: a graph that needs no
device never needs PortAudio.

`import_sounddevice` is looked up through this module at call time, so tests (and hosts
without PortAudio) can replace it; `find_device` resolves a YAML `device:` value; `rescan`
re-reads the device list after a sound server (JACK, PulseAudio) appeared; `release_stream`
stops a stream without ever hanging on a device that has gone away. Inside
`without_hardware()` device nodes check a graph without looking any device up.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .errors import MissingDependencyError, PipelineError
from .params import ParamValueError

PORTAUDIO_HINT = "install PortAudio: apt-get install libportaudio2 (and pip install sounddevice)"
DEVICES_HINT = "pipeline devices lists them; null_device stands in where there is no hardware"

# A context variable, not a module flag: a check in one thread (or task) leaves a graph
# running in another opening its devices as usual.
_hardware_free: ContextVar[bool] = ContextVar("hardware_free", default=False)


@contextlib.contextmanager
def without_hardware() -> Iterator[None]:
    """Graphs loaded and prepared inside are checked without hardware: device nodes check
    their parameters and negotiate formats, but look no device up and do not load
    PortAudio, and post `device-not-checked`. A graph prepared inside cannot start its
    devices, and `prepare()` does not run twice: load it again outside to run it. A device
    node of a plugin honours it by checking `is_hardware_free()` in its `validate()`.
    `pipeline validate` and `draw`, and the check `pipeline call` makes before dialling use
    it, so a graph's structure and formats are checked on any machine."""
    token = _hardware_free.set(True)
    try:
        yield
    finally:
        _hardware_free.reset(token)


def is_hardware_free() -> bool:
    """Whether device nodes are being checked without hardware (`without_hardware`)."""
    return _hardware_free.get()


def check_devices(graph: Any) -> list[PipelineError]:
    """Look up the devices of a graph loaded inside `without_hardware()`: each node is
    validated again, now with hardware, and the error of every one that fails is returned
    (located as the loader locates it), so all missing devices are named at once, not the
    first alone (`pipeline validate --devices`). Without PortAudio no device can be looked
    up: that is one error, naming the device nodes, not one per node."""
    wanting = list(dict.fromkeys(m.node for m in graph.messages
                                 if m.name == "device-not-checked"))
    if wanting:
        try:
            import_sounddevice()  # through the module: tests may replace it
        except MissingDependencyError as e:
            names = ", ".join(f"'{name}'" for name in wanting)
            return [MissingDependencyError(
                f"{e.message}: the sound device{'s' if len(wanting) > 1 else ''} of node"
                f"{'s' if len(wanting) > 1 else ''} {names} cannot be looked up", hint=e.hint)]
    errors: list[PipelineError] = []
    for name in list(graph.nodes):
        try:
            graph.validate_nodes({name})
        except PipelineError as e:
            errors.append(e)
    return errors


def import_sounddevice() -> Any:
    """sounddevice, or one clear error saying what to install."""
    try:
        import sounddevice
    except ImportError:
        raise MissingDependencyError("sounddevice is not installed",
                                     hint="pip install sounddevice") from None
    except OSError:  # sounddevice raises OSError when libportaudio is missing
        raise MissingDependencyError("PortAudio library not found", hint=PORTAUDIO_HINT) from None
    return sounddevice


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One PortAudio device, as `find_device` resolved it."""

    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_rate: int
    default_low_latency: float  # seconds, for the direction it was looked up for

    def max_channels(self, direction: str) -> int:
        return self.max_input_channels if direction == "input" else self.max_output_channels


def _sounddevice_for(param: str) -> Any:
    """sounddevice, or a ParamValueError the loader reports with the node's place in the YAML."""
    try:
        return import_sounddevice()  # a module global: tests may replace it
    except MissingDependencyError as e:
        raise ParamValueError(param, e.message, e.hint) from None


def find_device(spec: str | int | None, direction: str, param: str = "device") -> DeviceInfo:
    """The device named by `spec` (index, or case-insensitive name substring; None: the
    default) that has channels in `direction` ("input" or "output").

    Raises ParamValueError with one clear line when nothing matches.
    """
    sd = _sounddevice_for(param)
    devices = sd.query_devices()
    apis = sd.query_hostapis()
    key = f"max_{direction}_channels"
    usable = [i for i, d in enumerate(devices) if d[key] > 0]
    if not usable:
        raise ParamValueError(param, f"no sound device with {direction} channels found",
                              DEVICES_HINT)
    index: int | None = None
    text = None if spec is None else str(spec).strip()
    if text is None or text == "" or text == "default":
        default = sd.default.device[0 if direction == "input" else 1]
        index = default if default in usable else None
        if index is None:  # no system default: the host API's, else the first usable one
            for api in apis:
                d = api[f"default_{direction}_device"]
                if d in usable:
                    index = d
                    break
        if index is None:
            index = usable[0]
    elif text.isdigit():
        index = int(text)
        if index not in usable:
            raise ParamValueError(param, f"no sound device matches '{spec}' ({direction} device "
                                  f"index out of range or without {direction} channels)",
                                  DEVICES_HINT)
    else:
        lowered = text.lower()
        exact = [i for i in usable if devices[i]["name"].lower() == lowered]
        partial = [i for i in usable if lowered in devices[i]["name"].lower()]
        found = exact or partial
        if not found:
            raise ParamValueError(param, f"no sound device matches '{spec}'", DEVICES_HINT)
        index = found[0]
    d = devices[index]
    return DeviceInfo(index, d["name"], apis[d["hostapi"]]["name"], d["max_input_channels"],
                      d["max_output_channels"], int(d["default_samplerate"]),
                      float(d[f"default_low_{direction}_latency"]))


def check_settings(device: DeviceInfo, direction: str, rate: int, channels: int,
                   dtype: str) -> str | None:
    """None when the device accepts these settings, else PortAudio's reason."""
    sd = import_sounddevice()
    check = sd.check_input_settings if direction == "input" else sd.check_output_settings
    try:
        check(device=device.index, channels=channels, dtype=dtype, samplerate=rate)
    except Exception as e:  # PortAudioError or ValueError, with PortAudio's text
        return str(e)
    return None


def rescan() -> None:
    """Re-initialise PortAudio so that devices that appeared since import (a JACK server
    started later) are listed. Only call it while no stream is open."""
    sd = import_sounddevice()
    sd._terminate()
    sd._initialize()


# Streams whose device vanished: PortAudio cannot stop or close them (its JACK host API waits
# up to ten minutes for a process callback that never comes, pa_jack.c RealStop), so they are
# kept referenced (their callbacks must stay alive) and never touched again.
_abandoned: list[Any] = []


def abandon_stream(stream: Any) -> None:
    """Give up on a stream whose device is gone, without blocking."""
    _abandoned.append(stream)
    # sounddevice's exit handler calls Pa_Terminate, which would try to close this stream
    # and hang the process at exit; the OS reclaims everything anyway.
    handler = getattr(import_sounddevice(), "_exit_handler", None)
    if handler is not None:
        atexit.unregister(handler)


def release_stream(stream: Any, timeout: float = 2.0) -> bool:
    """Stop and close `stream`; True if done, False if it had to be abandoned (the device
    went away, or PortAudio did not return within `timeout` seconds)."""
    if stream is None:
        return True
    if not stream.stopped and not stream.active:  # running but no longer processing: gone
        abandon_stream(stream)
        return False
    done = threading.Event()

    def close() -> None:
        try:
            stream.abort()  # abort: the last few ms of playback are not worth waiting for
            stream.close()
        except Exception:  # the stream is unusable either way
            pass
        done.set()

    worker = threading.Thread(target=close, name="close-sound-stream", daemon=True)
    worker.start()
    if not done.wait(timeout):
        abandon_stream(stream)
        return False
    return True


def list_devices() -> str:
    """Host APIs and devices with their channels and default rates, one per line."""
    sd = import_sounddevice()
    apis = sd.query_hostapis()
    devices = sd.query_devices()
    default_in, default_out = sd.default.device
    lines = []
    for i, api in enumerate(apis):
        lines.append(f"host API {i}: {api['name']}")
        for d in api["devices"]:
            dev = devices[d]
            mark = "".join(m for m, on in (("<", d == default_in or d == api[
                "default_input_device"]), (">", d == default_out or d == api[
                "default_output_device"])) if on)
            lines.append(f"  [{d}] {dev['name']}: in {dev['max_input_channels']} ch, "
                         f"out {dev['max_output_channels']} ch, "
                         f"default {dev['default_samplerate']:.0f} Hz"
                         + (f"  {mark} default" if mark else ""))
    if not len(devices):
        lines.append("no sound devices found (null_device stands in: pipeline inspect "
                     "null_device)")
    return "\n".join(lines)
