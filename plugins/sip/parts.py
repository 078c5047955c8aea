"""A call's part: the call graph the `sip_endpoint` adds to the running graph for each call
(``call-N/``, with the call's `${call.*}` values), from its start to its end.

- starting it: our SDP answer on a free RTP port (`_start_media`; refused 503 when the range
  is full, 500 when the call graph fails, tried again on another port when another process
  took the first), or the media a 2xx or 18x brought (`_start_part`); the graph is the
  `call_graph`, or the `audio_call_graph` while the call has no video stream (`_graph_of`);
- attaching it (`_attach`): the ports our SDP named go to its RTP nodes as bound sockets;
- detaching it (`_detach`): its I/O tasks are awaited before its port is reused;
- rebuilding it when the media change (`_rebuild`): the ports stay held in between and what
  its nodes did in the call (`carry_state`) is handed to the new ones; a re-INVITE that adds
  or drops video, the far end's or ours (`controls.add_video`, `drop_video`), switches
  between the two graphs this way, and a video port ours dropped is freed then; once the
  new part is attached, ``call-media-ready`` says so (`_media_ready`);
- a fault in it (`_on_part_fault`) ends the call;
- measuring it (`_measure`) as it goes, for the call's end: what its RTP nodes and jitter
  buffers counted (`part_quality`), summed over the parts a rebuilt call had, for the
  `call-ended` message (docs/sip.md "Call quality").

`CallParts` is mixed into `nodes.SipEndpoint`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError

from . import call as sipcall
from .offer_answer import NegotiatedMedia
from .values import call_values, shared_params, written_map

if TYPE_CHECKING:
    from . import ua as sipua
    from .ports import PortAllocator

log = logging.getLogger("plugins.sip")

# Call graphs started for an incoming call whose first port was taken by another process:
# the second gets a port found free by test-binds through the whole range (PortAllocator).
_BIND_TRIES = 2

# What `call-ended` says of a call's media (docs/sip.md "Call quality"), from the stats() of
# its part's nodes: node kind -> (field, stat) pairs. Counts are summed over the call's
# parts (each rebuild starts its nodes afresh) and over nodes of a kind; `_LAST` fields,
# estimates rather than counts, are the last part's that knew them.
_QUALITY: dict[str, tuple[tuple[str, str], ...]] = {
    "rtp_session": (("rx_packets", "packets_received"), ("rx_lost", "lost"),
                    ("tx_packets", "packets_sent"), ("dropped_foreign", "dropped_foreign"),
                    ("jitter_ms", "jitter_ms"), ("rtt_ms", "rtt_ms")),
    "jitter_buffer": (("concealed", "concealed"),),
    "video_rtp_receiver": (("video_rx_frames", "frames"), ("video_rx_lost", "lost"),
                           ("dropped_foreign", "dropped_foreign")),
}
QUALITY_FIELDS = ("rx_packets", "rx_lost", "jitter_ms", "rtt_ms", "concealed",
                  "dropped_foreign", "tx_packets", "video_rx_frames", "video_rx_lost")
_LAST = frozenset(("jitter_ms", "rtt_ms"))


def part_quality(nodes: Any) -> dict[str, int | float | None]:
    """The `QUALITY_FIELDS` of one part from its `nodes`; None where no node measured it
    (no jitter buffer: no `concealed`; no RTCP report yet: no `rtt_ms`)."""
    out: dict[str, int | float | None] = dict.fromkeys(QUALITY_FIELDS)
    for node in nodes:
        pairs = _QUALITY.get(node.kind)
        if pairs is None:
            continue
        stats = node.stats()
        for field, stat in pairs:
            out[field] = add_quality(field, out[field], stats.get(stat))
    return out


def add_quality(field: str, before: Any, value: Any) -> Any:
    """`field` of two measurements, the later `value`: summed, or for a `_LAST` field the
    later one where it is known."""
    if value is None:
        return before
    if before is None or field in _LAST:
        return value
    return before + value


class CallParts:
    """Starting, attaching, detaching and rebuilding calls' parts, for `SipEndpoint`."""

    # parameters of `SipEndpoint`
    call_graph: Any
    audio_call_graph: Any
    call_graph_params: dict | None
    rtp_timeout: float
    video: bool
    video_codecs: list[Any]
    srtp: str
    # set up by `SipEndpoint.start`
    ua: sipua.UserAgent
    ports: PortAllocator
    media_ip_used: str
    codec_infos: list[Any]
    parts: dict[str, str]
    part_values: dict[str, dict[str, Any]]
    _loop: asyncio.AbstractEventLoop
    _c: dict[str, int]
    _rebuilding: dict[str, NegotiatedMedia]
    _failed_parts: dict[str, str]
    _pending_detach: set[asyncio.Future]
    _quality: dict[str, dict[str, Any]]

    def _start_media(self, call_id: str) -> bool:
        """Make our SDP answer on a free RTP port and start the call graph with it; False
        when the call could not have it and was refused (486 room full, 503 no port, 500
        call graph failed)."""
        now = self._loop.time()
        if self._refused_room_full(call_id):  # it may have filled while this one rang
            return False
        error: Exception | None = None
        incoming = self.ua.calls.get(call_id)
        preview = incoming.preview if incoming is not None else None
        # An INVITE without SDP gets our offer, which names the ports before the call graph
        # binds them (after the ACK): check them now, as for an outgoing call.
        late = incoming is not None and incoming.late_offer
        check = self.call_graph is not None
        video_later = self._video_may_come()
        video_port = 0
        try:
            if (preview is not None and preview[1].video is not None) or (
                    late and self.video and self.video_codecs):
                # A video stream we accepted gets its own port (checked: not retried below).
                video_port = self.ports.allocate(check=check)
            if late:
                port = self.ports.allocate(check=check)
            else:  # test-bound first only once the range proved shared (PortAllocator)
                port = self.ports.allocate(check=check and self.ports.shared, answer=True)
        except PipelineError as exc:  # every port pair taken: busy for now, not broken
            if video_port:
                self.ports.release(video_port)
            self._no_port(call_id, exc)
            return False
        if video_later and not video_port:
            # One video may bring by re-INVITE: kept when the range has a pair to spare (an
            # audio call that fits is not refused for it; without, such a re-INVITE's video
            # is refused, port 0).
            try:
                video_port = self.ports.allocate(check=check)
            except PipelineError:
                pass
        for attempt in range(_BIND_TRIES):
            # No test-bind per call: the call graph binds the port; only when that fails is
            # the port checked, and when it is busy (another process's: workers sharing
            # one range) the next free one is found by test-binds, and held for the graph.
            if attempt:
                try:
                    port = self.ports.allocate(check=True, answer=True)
                except PipelineError as exc:
                    if video_port:
                        self.ports.release(video_port)
                    self._no_port(call_id, exc)
                    return False
            try:
                media = self.ua.prepare_answer(call_id, port, video_port)
                call = self.ua.calls[call_id]
                if video_port and call.video_port != video_port:
                    if video_later:
                        # No video now (none offered, or port 0): the port stays the call's
                        # (unbound, as after a re-offer that drops video), for a re-INVITE
                        # that adds it (RFC 3264 8.1; the UA accepts video on a call's
                        # video port only). Its part is the audio_call_graph till then.
                        call.video_port = video_port
                    else:
                        self.ports.release(video_port)  # our SDP has no video: not the call's
                        video_port = 0
                if media is not None:  # else a late offer's: its graph starts with the ACK
                    # (a failure leaves the video port held: released below if no retry)
                    self._attach(call, media, retry=True)
            except Exception as exc:
                self.ports.release(port)
                error = exc
                if attempt + 1 < _BIND_TRIES and self.call_graph is not None \
                        and not self.ports.is_free(port):
                    self.ports.shared = True
                    continue
            else:
                error = None
            break
        if error is not None:
            if video_port:
                self.ports.release(video_port)
            self._c["part_errors"] += 1
            log.warning("call %s: call graph failed to start: %s", call_id, error)
            self.post("error", message=f"call graph for call {call_id} failed: {error}")
            self.ua.reject(call_id, 500, now, reason="Call Graph Failed")
            self._pump()
            return False
        return True

    def _video_may_come(self) -> bool:
        """Whether a call answered without video keeps a video port for a re-INVITE that
        adds video: with an `audio_call_graph` (which it runs till then), as video calls
        are served (`video_codecs`)."""
        return self.audio_call_graph is not None and self.video and bool(self.video_codecs)

    def _graph_of(self, media: NegotiatedMedia) -> tuple[str, dict[Any, Any]]:
        """The call graph a call with `media` runs and the params it gets: `call_graph`,
        or the `audio_call_graph` while no video stream is agreed (docs/sip.md); each gets
        the `call_graph_params` it declares when there are two."""
        if self.audio_call_graph is None:
            return str(self.call_graph), written_map(self.call_graph_params)
        path = str(self.audio_call_graph if media.video is None else self.call_graph)
        return path, shared_params(path, self.call_graph_params)

    def _no_port(self, call_id: str, exc: Exception) -> None:
        """Every port pair of the range is taken: 503, busy for now, not broken."""
        self._c["no_port"] = self._c.get("no_port", 0) + 1
        log.warning("call %s: %s", call_id, exc)
        self.ua.reject(call_id, 503, self._loop.time(), reason="No Free RTP Port")
        self._pump()

    def _start_part(self, call: sipcall.Call, media: NegotiatedMedia) -> bool:
        """Run the call's part with `media`: started, or rebuilt when early media started
        it with other values (the 2xx answered differently). False when it failed (the
        call is hung up)."""
        if call.call_id in self._rebuilding:  # built with these once the old part is gone
            self._rebuilding[call.call_id] = media
            return True
        if call.call_id in self.parts:
            values = call_values(call, media, local_ip=self.media_ip_used,
                                 rtp_timeout=self.rtp_timeout, codecs=self.codec_infos)
            if values != self.part_values.get(call.call_id):
                # The answer starts the call: what the early-media part did (digits dialled
                # into the ringback) is not carried into it.
                self._rebuild(call, media, carry=False)
            return True
        try:
            self._attach(call, media)
        except Exception as exc:
            self._c["part_errors"] += 1
            self.post("error", message=f"call graph for call {call.call_id} failed: {exc}")
            self.ua.hangup(call.call_id, self._loop.time())
            return False
        return True

    def _attach(self, call: sipcall.Call, media: NegotiatedMedia,
                carried: dict[str, tuple[type, Any]] | None = None, *,
                retry: bool = False) -> None:
        # The ports our SDP named were held since (PortAllocator), as are those of a part
        # being rebuilt: they go to the part's rtp_session and video RTP node as bound
        # sockets. `retry`: a failed start is tried again on another audio port
        # (`_start_media`), so the video port stays held for that one: the failed part's
        # video node hands its sockets back as it stops (as through a rebuild) rather than
        # closing them, which let anyone take the port until the next start bound it.
        video = call.video_port
        self.ports.ready(call.rtp_port)
        if video:
            self.ports.ready(video)
            if retry:
                self.ports.keep(video)
        started = False
        try:
            self._attach_part(call, media, carried or {})
            started = True
        finally:  # not taken (no node on it, video dropped, the part failed): not held
            self.ports.unhold(call.rtp_port)
            if video and retry:
                self.ports.take_back(video)  # (ends the keep request however it went)
            if video and (started or not retry):
                self.ports.unhold(video)

    def _attach_part(self, call: sipcall.Call, media: NegotiatedMedia,
                     carried: dict[str, tuple[type, Any]]) -> None:
        if self.call_graph is None:
            return  # signalling only: nothing to run
        from pipeline.loader import add_part

        values = call_values(call, media, local_ip=self.media_ip_used,
                             rtp_timeout=self.rtp_timeout, codecs=self.codec_infos)
        prefix = f"call-{call.number}/"
        path, params = self._graph_of(media)
        names = add_part(self.graph, path, prefix, call=values, overrides=params,
                         registry=self.registry)
        try:
            for name, (kind, state) in carried.items():
                node = self.graph.nodes.get(name)
                if type(node) is kind:  # the same node of the rebuilt graph goes on from there
                    node.restore_state(state)
            room = self._room()
            if room is not None:
                # Name the room's tracks after the far party before the part joins the room.
                who = call.caller if call.direction == "in" else call.callee
                for ln in self.graph.links_at(names):
                    if ln.dst == room.name and ln.src.startswith(prefix):
                        room.set_identity(ln.dst_port, who, call_id=call.call_id)
                    elif ln.src == room.name and ln.dst.startswith(prefix):
                        room.set_identity(ln.src_port, who, call_id=call.call_id)
            self.graph.runtime.attach(prefix, names, on_fault=self._on_part_fault)
        except Exception:
            # The part goes as an ended call's does (its nodes stopped if they started, then
            # removed with their links): a failed call leaves nothing in the graph.
            if any(n.startswith(prefix) for n in self.graph.nodes):
                done = self.graph.runtime.detach(prefix)
                if done is not None:
                    self._pending_detach.add(done)
                    done.add_done_callback(self._pending_detach.discard)
            raise
        self.parts[call.call_id] = prefix
        self.part_values[call.call_id] = values
        if self._debug:
            log.debug("%s: call graph %s started: call_id=%s codec=%s direction=%s nodes=%d",
                      self.name, prefix, call.call_id, values["codec"], values["direction"],
                      len(names))

    def _detach(self, call_id: str) -> asyncio.Future | None:
        """Remove a call's part. Its I/O tasks are cancelled and awaited first, so sockets
        close after their readers are gone; returns what to await before reusing its port."""
        prefix = self.parts.pop(call_id, None)
        self.part_values.pop(call_id, None)
        # the silence its rtp_session reported goes with it (a new part counts afresh)
        self._silence_heard(call_id)
        runtime = self.graph.runtime if self.graph is not None else None
        if prefix is None or runtime is None or prefix not in runtime.parts:
            return None
        self._measure(call_id, prefix)
        if self._debug:
            log.debug("%s: call graph %s stopped: call_id=%s", self.name, prefix, call_id)
        done = runtime.detach(prefix)
        if done is not None:
            self._pending_detach.add(done)
            done.add_done_callback(self._pending_detach.discard)
        return done

    def quality_so_far(self, call_id: str, prefix: str) -> dict[str, Any] | None:
        """What the call's media did so far (what its `call-ended` would say now): the
        parts a rebuild ended and its running part `prefix`; None when that is not running
        (being rebuilt)."""
        part = self.graph.runtime.parts.get(prefix)
        if part is None:
            return None
        nodes = self.graph.nodes  # (the part's names: not a walk through every call's)
        now = part_quality(nodes[name] for name in part.names if name in nodes)
        total = self._quality.get(call_id)
        return now if total is None else {
            field: add_quality(field, total[field], now[field]) for field in QUALITY_FIELDS}

    def _measure(self, call_id: str, prefix: str) -> None:
        """Add what the part's nodes counted to the call's measurements, before the part
        goes (its nodes go with it): `call-ended` reports them for the whole call."""
        so_far = self.quality_so_far(call_id, prefix)
        if so_far is not None:
            self._quality[call_id] = so_far

    def _prefix(self, call: sipcall.Call) -> str | None:
        """The prefix of the call's part, also while it is being rebuilt."""
        if call.call_id in self._rebuilding:
            return f"call-{call.number}/"
        return self.parts.get(call.call_id) or self._failed_parts.get(call.call_id)

    def _rebuild(self, call: sipcall.Call, media: NegotiatedMedia, carry: bool = True) -> None:
        """New media values: the old part goes, then the new one comes (same RTP ports).
        Media that come before the old part is gone (a 2xx after an 18x, a re-INVITE) are
        the ones the new part gets: starting a part then would find the port still bound.

        The ports stay ours in between (the nodes on them hand the sockets back, `keep`),
        and what the old part's nodes did in the call so far (`carry_state`: the digits a
        dtmf_events node dialled) is handed to the same nodes of the new part
        (`restore_state`), so the call goes on rather than starting again (unless not
        `carry`: the 2xx after early media). What a node of an earlier part did is kept
        while a part without that node runs: a video call's recorder, through the audio
        graph that ran while video was dropped, goes on with its file's next part when video
        comes back, rather than emptying the file."""
        prefix = self.parts[call.call_id]
        carried = {**self._kept_states.get(call.call_id, {}),
                   **{name: (type(node), node.carry_state())
                      for name, node in self.graph.nodes.items()
                      if name.startswith(prefix)
                      and callable(getattr(node, "carry_state", None))}} if carry else {}
        self._kept_states[call.call_id] = carried
        # The old part's ports too: a video port the call has given up since (our
        # add_video refused) is held till the old part's sockets are closed, then freed.
        used = self.part_values.get(call.call_id, {}).get("local_video_port")
        ports = list(dict.fromkeys(p for p in (call.rtp_port, call.video_port, used) if p))
        for port in ports:
            self.ports.keep(port)
        # The room keeps the caller as one participant (its track, name, gains) while its
        # in_N/out_N are unlinked, rather than seeing a leave and a join.
        room, seats = self._kept_seats(prefix)
        pending = self._detach(call.call_id)
        self._rebuilding[call.call_id] = media

        async def later() -> None:
            try:
                await rebuild()
            finally:  # linked again: it goes on; not (failed, call ended): it leaves
                for seat in seats:
                    room.release_participant(seat)

        async def rebuild() -> None:
            if pending is not None:
                try:  # the old part's sockets close first; never wait forever for that
                    await asyncio.wait_for(asyncio.shield(pending), 2.0)
                except TimeoutError:
                    self._c["detach_timeouts"] += 1
            latest = self._rebuilding.pop(call.call_id)
            for port in ports:
                self.ports.take_back(port)
            if call.active and call.call_id not in self.parts:
                try:
                    self._attach(call, latest, carried)
                except Exception as exc:
                    self._c["part_errors"] += 1
                    self.post("error", message=f"call graph for call {call.call_id} failed: "
                              f"{exc}")
                    self.hangup(call.call_id)
                else:
                    self._media_ready(call, latest, rebuilt=True)
            else:  # the call ended meanwhile
                for port in ports:
                    self.ports.unhold(port)
            for port in ports:
                if port not in (call.rtp_port, call.video_port):
                    self.ports.release(port)  # (its end frees the call's own)

        task = self._loop.create_task(later())
        self._pending_detach.add(task)
        task.add_done_callback(self._pending_detach.discard)

    def _media_ready(self, call: sipcall.Call, media: NegotiatedMedia, *,
                     rebuilt: bool) -> None:
        """Say that the call's part runs with `media`, its nodes in the graph: after a
        `call-updated` (`rebuilt`: a new part, whose nodes the application looks up again;
        else the same one goes on), or after the rebuild that a 2xx with other media than
        the early media's made. `call-updated` is posted before the rebuild, when the new
        nodes do not exist yet."""
        self.post("call-media-ready", call_id=call.call_id, direction=media.direction,
                  **self._media_fields(media), prefix=self.parts[call.call_id],
                  rebuilt=rebuilt)

    def _call_of_prefix(self, node_name: str) -> str | None:
        for call_id, prefix in self.parts.items():
            if node_name.startswith(prefix):
                return call_id
        return None

    def _on_part_fault(self, prefix: str, exc: BaseException) -> None:
        self._c["part_faults"] += 1
        call_id = next((c for c, p in self.parts.items() if p == prefix), None)
        if call_id is not None:
            self._measure(call_id, prefix)  # (still in the graph: the runtime detaches it)
            self.parts.pop(call_id, None)
            self._failed_parts[call_id] = prefix
            call = self.ua.calls.get(call_id)
            if call is not None and call.state == "incoming":  # early media: refused as at start
                self.ua.reject(call_id, 500, self._loop.time(), reason="Call Graph Failed",
                               ended=sipcall.CALL_GRAPH_FAILED)
            else:
                self.ua.hangup(call_id, self._loop.time(), reason=sipcall.CALL_GRAPH_FAILED)
            self._pump()
