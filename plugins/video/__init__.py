"""Video: frames over PyAV, RTP payload formats (VP8, H.264), codecs, and the graph nodes.

The building blocks are sans-IO (they take bytes and frames and return bytes and frames):
`frames` (numpy views over `av.VideoFrame`, swscale), `pattern` (a test picture with a
burned-in frame counter), `codec` (real-time H.264/VP8 over PyAV), `rtp_vp8` and `rtp_h264`
(RFC 7741 / RFC 6184 packetizers and frame assemblers). `sources`, `nodes`, `recorder` and
`rtp_nodes` wrap them as graph nodes; `rtp_nodes` owns the UDP sockets; `y4m` writes raw
video to a file or a pipe.
"""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .nodes import Convert, Scale, VideoDecoderNode, VideoEncoderNode, VideoTee
    from .recorder import VideoRecorder
    from .rtp_nodes import VideoRtpReceiver, VideoRtpSender
    from .sources import VideoFileSource, VideoTestSource
    from .y4m import Y4mSink

    return [VideoTestSource, VideoFileSource, Scale, Convert, VideoTee, VideoEncoderNode,
            VideoDecoderNode, VideoRecorder, VideoRtpSender, VideoRtpReceiver, Y4mSink]


@hookimpl
def register_payload_formats():
    from plugins.rtp.payload import PayloadFormat

    from .rtp_h264 import H264Depacketizer, H264Packetizer
    from .rtp_vp8 import Vp8Depacketizer, Vp8Packetizer

    return [PayloadFormat("vp8", "RFC 7741", packetizer=Vp8Packetizer,
                          depacketizer=Vp8Depacketizer),
            PayloadFormat("h264", "RFC 6184", packetizer=H264Packetizer,
                          depacketizer=H264Depacketizer)]
