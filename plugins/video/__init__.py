"""Video building blocks: RTP payload formats (VP8, H.264), PyAV codec wrappers, frame helpers
and a test pattern with a burned-in frame counter.

Everything here is sans-IO: the modules take bytes and frames and return bytes and frames; the
graph nodes that own sockets and timers wrap them.
"""
