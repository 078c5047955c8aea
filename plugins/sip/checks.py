"""The `sip_endpoint`'s checks of its parameters (`validate`: listeners, registrar, TLS,
codecs, room, the call graph and audio call graph), and the codecs it offers and accepts
(`_usable`): those listed whose encoder and decoder nodes exist, less those either call
graph was found to fail with (`callcheck`). `_DTMF` and `_CN` name the two formats that
need no codec nodes (`cli` checks `--codecs` with them too).

`EndpointChecks` is mixed into `nodes.SipEndpoint`, which declares the parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.params import ParamValueError

from . import locate, registration
from .dns import check_servers
from .offer_answer import Codec, dtmf_clocks, video_codec
from .ports import port_range
from .transport import ListenSpec
from .values import sdp_codec

_DTMF = "telephone-event"  # RFC 4733: no codec nodes, the rtp_session sends and reads it
_CN = "cn"  # RFC 3389 comfort noise: no codec nodes, the rtp_session and jitter buffer read it


class EndpointChecks:
    """Checking the parameters and choosing the codecs, for `SipEndpoint`."""

    # parameters of `SipEndpoint`
    listen: list[Any]
    call_graph: Any
    audio_call_graph: Any
    call_graph_params: dict | None
    codecs: list[Any]
    registrar: str | None
    users: dict | None
    room: str | None
    rtp_port_range: str
    auto_answer: bool
    dial: str | None
    video: bool
    video_codecs: list[Any]
    tls_cert: Any
    tls_key: Any
    dns_servers: list[Any] | None
    # set up by `validate`, used by `SipEndpoint.start`
    _specs: list[ListenSpec]

    # ---- checks -------------------------------------------------------------------------
    def validate(self) -> None:
        try:
            self._specs = [ListenSpec.parse(str(x)) for x in self.listen]
        except ValueError as e:
            raise ParamValueError("listen", f"parameter 'listen': {e.args[0]}",
                                  e.args[1]) from None
        if not self._specs:
            raise ParamValueError("listen", "parameter 'listen' is empty",
                                  "write e.g. [udp:127.0.0.1:5060]")
        try:
            check_servers([str(x) for x in self.dns_servers or ()])
        except ValueError as e:
            raise ParamValueError("dns_servers", f"parameter 'dns_servers': {e}",
                                  "write e.g. [192.0.2.53] or [127.0.0.1:5353]") from None
        for name in ("call_graph", "audio_call_graph"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ParamValueError(name, f"parameter '{name}': file '{path}' not found",
                                      "write ${graph_dir}/calls/NAME.yaml for a path "
                                      "relative to the graph file")
        self._check_audio_call_graph()
        if self.call_graph is not None and self.call_graph_params:
            from pipeline.loader import declared_params

            declared = declared_params(self.call_graph)
            if self.audio_call_graph is not None:  # a key of either graph
                declared = {**declared, **declared_params(self.audio_call_graph)}
            unknown = [k for k in self.call_graph_params if k not in declared]
            if unknown:  # else every call would fail to start (answered 500)
                raise ParamValueError("call_graph_params", f"call graph '{self.call_graph}' "
                                      f"has no parameter '{unknown[0]}'", "declared: "
                                      + (", ".join(declared) or "none"))
        try:
            port_range(str(self.rtp_port_range))
        except ValueError as e:
            raise ParamValueError("rtp_port_range", f"parameter 'rtp_port_range': {e.args[0]}",
                                  "write e.g. 20000-29999") from None
        known = {*self.registry.codecs, _DTMF, _CN}
        unknown = [c for c in self.codecs if str(c).lower() not in known]
        if unknown:
            raise ParamValueError("codecs", f"parameter 'codecs': unknown codec '{unknown[0]}'",
                                  "known: " + ", ".join(sorted(known)))
        # A TLS client needs no certificate (`pipeline call sips:...`, pjsua, baresip): an
        # endpoint that only dials may have a tls listener without one, which then only
        # connects out (SipTransport closes what comes in, and says so). One that serves
        # calls must have one, or every TLS caller would fail: one without `dial`, one that
        # registers (its Contact, our TLS listener, is where its incoming calls come), one
        # set up to answer calls (`users` to challenge callers, or answered by the
        # application: auto_answer false).
        if any(s.transport == "tls" for s in self._specs) and not self.tls_cert:
            served = "registrar" if self.registrar else "users" if self.users \
                else "auto_answer: false" if not self.auto_answer \
                else None if self.dial else "it does not dial"
            if served is not None:
                raise ParamValueError("tls_cert", "parameter 'tls_cert' is required by a "
                                      f"tls listener that accepts calls ({served})",
                                      "set tls_cert and tls_key (PEM files); an endpoint "
                                      "that only dials out (dial) needs none, unless it "
                                      "registers or answers calls")
        if self.tls_key and not self.tls_cert:
            raise ParamValueError("tls_key", "parameter 'tls_key' needs tls_cert",
                                  "set tls_cert (PEM) too, or neither to only connect out")
        if self.registrar:
            self._check_registrar(str(self.registrar))
        if self.room is not None and self.graph is not None and not callable(
                getattr(self.graph.nodes.get(str(self.room)), "can_join", None)):
            raise ParamValueError("room", f"parameter 'room': '{self.room}' is not a "
                                  "conference node of this graph",
                                  "name a node of type conference, e.g. room: room")
        for name in self.video_codecs or ():
            try:
                video_codec(str(name))
            except PipelineError as exc:
                raise ParamValueError("video_codecs", f"parameter 'video_codecs': {exc}",
                                      "use vp8 and/or h264") from None
        # The call graph's check (below) is kept while what it depends on is unchanged (a
        # program may call validate_nodes() again after loading); else it is made
        # again, and its old answer (codecs not offered) counts neither here nor there.
        key = None
        if self.call_graph is not None:
            from .callcheck import endpoint_key

            key = endpoint_key(self)
            if self._call_graph_key != key:
                self._call_graph_fails = None
        if not self.codecs:  # (`-p codecs=`: an empty list, not a missing plugin)
            raise ParamValueError("codecs", "parameter 'codecs' is empty", "list at least "
                                  "one, e.g. codecs: [pcmu, telephone-event] (-p "
                                  "codecs=pcmu,telephone-event)")
        if self._usable_codecs() == []:
            raise ParamValueError("codecs", "parameter 'codecs': no listed codec has encoder "
                                  "and decoder nodes", "install the codecs plugin family")
        # Else every call fails (500 Call Graph Failed). (`pipeline call` checks its own
        # endpoint's before dialling, in its words: `callcheck.mark_checked`.)
        if key is not None and self._call_graph_fails is None:
            from .callcheck import check_endpoint

            fails = check_endpoint(self)
            if self.audio_call_graph is not None:
                fails |= check_endpoint(self, audio=True)
            self._call_graph_fails = fails
            if self._usable_codecs() == []:  # each works with some codecs, not one with both
                raise ParamValueError("audio_call_graph", "parameter 'audio_call_graph': no "
                                      "codec works with both it and call_graph",
                                      "make both graphs run one of the listed codecs")
            self._call_graph_key = key  # (not after a failure: checked again next time)

    def _check_audio_call_graph(self) -> None:
        """An audio_call_graph runs beside a call_graph, for the calls without video."""
        if self.audio_call_graph is None:
            return
        if self.call_graph is None:
            raise ParamValueError("audio_call_graph", "parameter 'audio_call_graph' needs "
                                  "call_graph", "set call_graph: the graph of video calls")
        if not self.video:
            raise ParamValueError("audio_call_graph", "parameter 'audio_call_graph' needs "
                                  "video: true (without it every call runs call_graph)",
                                  "set video: true, or remove audio_call_graph")

    def _check_registrar(self, registrar: str) -> None:
        """A registrar reached over a transport we do not listen on fails at the start, in
        one line (else the first REGISTER failed deep inside)."""
        from .uri import SipUri

        text = registrar if registrar.lower().startswith(("sip:", "sips:")) \
            else f"sip:{registrar}"
        try:
            uri = SipUri.parse(text)
        except PipelineError as e:
            raise ParamValueError("registrar", f"parameter 'registrar': {e.message}",
                                  "write e.g. sip:192.0.2.10:5060") from None
        wanted = registration.registrar_transport(uri)
        if wanted is not None and wanted not in locate.DEFAULT_PORTS:  # ws, sctp
            raise ParamValueError("registrar", f"parameter 'registrar': transport {wanted} "
                                  "is not supported", "use udp, tcp or tls "
                                  "(transport=tcp, sips:)")
        if wanted is not None and wanted not in {s.transport for s in self._specs}:
            raise ParamValueError("registrar", f"parameter 'registrar' needs a {wanted} "
                                  "listener", f"add {wanted}:IP:PORT to listen")

    # The codecs the call graph fails with, once validate() has checked it: not offered;
    # and what that check depended on (callcheck.endpoint_key).
    _call_graph_fails: frozenset[str] | None = None
    _call_graph_key: tuple | None = None

    def _usable(self) -> list[tuple[Codec, Any]]:
        """The codecs to offer and accept, in the listed order, each with the registry's
        description (None for telephone-event and cn): those whose encoder and decoder node
        types exist (DESIGN.md: what the call graph can encode and decode); telephone-event
        at each of their clock rates and 8000 (`dtmf_clocks`)."""
        registry = self.registry
        out: list[tuple[Codec, Any]] = []
        seen: set[str] = set()
        for name in self.codecs:
            name = str(name).lower()
            if name in seen:  # listed twice (pcmu, PCMU): offered once
                continue
            seen.add(name)
            if name in (self._call_graph_fails or ()):
                continue
            if name in (_DTMF, _CN):
                out.append((Codec.named(name), None))
                continue
            info = registry.codecs.get(name)
            if info is None or info.encoder_kind not in registry.node_types \
                    or info.decoder_kind not in registry.node_types:
                continue
            out.append((sdp_codec(info), info))
        formats = dtmf_clocks([codec for codec, _ in out])
        infos = {codec: info for codec, info in out}
        return [(codec, infos.get(codec)) for codec in formats]

    def _usable_codecs(self) -> list[Codec]:
        """The SDP formats of `_usable` ([] when none is audio)."""
        out = [codec for codec, _ in self._usable()]
        return out if any(c.is_audio for c in out) else []
