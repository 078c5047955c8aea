"""The plugin registry: loads built-in families, entry-point plugins and local modules."""

from __future__ import annotations

import builtins
import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .node import NODE_METHODS, Node
from .params import ParamValueError

log = logging.getLogger("pipeline.registry")

ENTRY_POINT_GROUP = "voip_pipeline"
HOOKS = tuple(n for n in dir(hookspecs) if n.startswith("register_"))
_LOCAL = "_voip_local_"  # the prefix of local plugin modules' names in sys.modules
_KIND_RE = re.compile(r"[a-z][a-z0-9_]*")
# What every codec description carries (plugins.codecs.base.CodecInfo; sdp_channels optional).
_CODEC_FIELDS = ("name", "encoding_name", "clock_rate", "channels", "sample_rate",
                 "payload_type", "encoder_kind", "decoder_kind")
# A parameter is a plain instance attribute: named like one of these it would shadow the
# framework's own (a method, `name`, `kind`) or clash with the constructor's `name`.
_NODE_NAMES = frozenset(dir(Node)) | frozenset(Node.__slots__)

# Built-in families register through the same hooks as third-party plugins.
BUILTIN_PLUGINS = (
    "plugins.generators",
    "plugins.basic",
    "plugins.mixer",
    "plugins.resample",
    "plugins.files",
    "plugins.codecs",
    "plugins.rtp",
    "plugins.devices",
    "plugins.video",
    "plugins.conference",
    "plugins.aec",
    "plugins.jitterbuffer",
    "plugins.sip",
)

# GStreamer element names a gst-launch user types, and the node kind that does the job here
# (docs/cli.md "Coming from gst-launch and pjsua" has the same table; a test keeps them in
# step). Looked up before the fuzzy match, which offers nonsense for them (audiotestsrc ->
# video_test_source). None: there is nothing to use instead, for the reason in NOT_NEEDED.
GSTREAMER_KINDS: dict[str, str | None] = {
    "audiotestsrc": "tone", "fakesink": "null_sink", "appsink": "frame_sink",
    "filesink": "wav_recorder", "wavenc": "wav_recorder",
    "filesrc": "wav_source", "wavparse": "wav_source", "decodebin": "wav_source",
    "audioconvert": "resample", "audioresample": "resample", "volume": "gain",
    "audiomixer": "mixer", "udpsrc": "rtp_session", "udpsink": "rtp_session",
    "rtpjitterbuffer": "jitter_buffer", "mulawenc": "pcmu_encoder",
    "mulawdec": "pcmu_decoder", "alawenc": "pcma_encoder", "alawdec": "pcma_decoder",
    "avenc_g722": "g722_encoder", "avdec_g722": "g722_decoder",
    "opusenc": "opus_encoder", "opusdec": "opus_decoder",
    "webrtcdsp": "aec", "webrtcechoprobe": "aec",
    "autoaudiosrc": "capture", "autoaudiosink": "playback",
    "videotestsrc": "video_test_source", "videoscale": "scale", "videoconvert": "convert",
    "x264enc": "video_encoder", "vp8enc": "video_encoder", "avdec_h264": "video_decoder",
    "vp8dec": "video_decoder", "webmmux": "video_recorder", "mp4mux": "video_recorder",
    "matroskamux": "video_recorder", "rtpvp8pay": "video_rtp_sender",
    "rtph264pay": "video_rtp_sender", "rtpvp8depay": "video_rtp_receiver",
    "rtph264depay": "video_rtp_receiver", "queue": None, "v4l2src": None,
    "autovideosrc": None, "autovideosink": None, "capsfilter": None, "videorate": None,
    "fdsrc": None, "fdsink": None, "identity": "gain", "adder": "mixer",
    "y4menc": "y4m_sink", "qtdemux": "wav_source", "matroskademux": "wav_source",
    "oggdemux": "wav_source", "flacdec": "wav_source", "alsasrc": "capture",
    "pulsesrc": "capture", "alsasink": "playback", "pulsesink": "playback",
    "dtmfsrc": "dtmf_tone", "rtpdtmfsrc": "dtmf_events", "rtpdtmfdepay": "rtp_session",
    "rtpbin": "rtp_session",
}
# The video node of an element above that has an audio and a video use: a gst-launch line
# for video that ends in udpsink wants video_rtp_sender, not the audio rtp_session.
GSTREAMER_VIDEO_KINDS: dict[str, str] = {
    "filesink": "video_recorder", "filesrc": "video_file_source",
    "decodebin": "video_file_source", "udpsink": "video_rtp_sender",
    "udpsrc": "video_rtp_receiver", "qtdemux": "video_file_source",
    "matroskademux": "video_file_source", "oggdemux": "video_file_source",
}
_NO_CAMERA = ("not available: no node reads a camera; play a file with video_file_source "
              "path=, or use video_test_source")
NOT_NEEDED = {"queue": "not needed: nothing is queued between nodes; remove it",
              "v4l2src": _NO_CAMERA, "autovideosrc": _NO_CAMERA,
              "autovideosink": "not available: no node shows video; record it with "
                               "video_recorder path=a.webm, or send it with video_rtp_sender",
              "capsfilter": "not needed: formats are negotiated here, and a converter goes "
                            "in where one is needed; to force a format, name the converter: "
                            "resample rate=8000 channels=1 (audio), scale width=320 "
                            "height=240 (video)",
              "videorate": "not available: no node changes a video's frame rate; give the "
                           "source the one wanted (video_test_source fps=30)",
              "fdsrc": "not available: no node reads a pipe; play a file with wav_source "
                       "path= (audio) or video_file_source path= (video), or push frames from "
                       "code with app_source",
              "fdsink": "not available for audio: no node writes audio to a pipe (record it "
                        "with wav_recorder path=a.wav); video goes to stdout with y4m_sink "
                        "path=-"}
# GStreamer property names a gst-launch user gives our nodes, and ours (graph.py's hint for
# an unknown parameter names those the node has): udpsrc's port is where rtp_session
# listens, udpsink's where it sends; volume is a factor, ours are in dB.
GSTREAMER_PARAMS: dict[str, tuple[str, ...]] = {
    "location": ("path",), "volume": ("gain", "level"), "host": ("remote_ip",),
    "address": ("local_ip",), "port": ("local_port", "remote_port"),
}
# An audio payloader or depayloader (rtppcmupay, rtpL16depay, ...): rtp_session with the
# codec, whose name is the element's middle (the video ones are in GSTREAMER_KINDS).
_RTP_PAY_RE = re.compile(r"rtp([a-z0-9]+?)(?:de)?pay", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class BrokenPlugin:
    """An installed plugin that failed to load: left out, and named by `pipeline inspect`."""

    name: str
    entry_point: str
    error: str


class Registry:
    """Node types, codecs and RTP payload formats from every plugin, with the plugin each
    node type came from; `broken` lists installed plugins that failed to load."""

    def __init__(self, *, entry_points: bool = True, builtins: bool = True) -> None:
        self.pm = pluggy.PluginManager("voip_pipeline")
        self.pm.add_hookspecs(hookspecs)
        self.node_types: dict[str, type[Node]] = {}
        self.codecs: dict[str, Any] = {}
        self._owners: dict[tuple[str, str], str] = {}  # (what, name) -> plugin
        self.payload_formats: dict[str, Any] = {}
        self.broken: list[BrokenPlugin] = []
        if builtins:
            for modname in BUILTIN_PLUGINS:
                self.register(importlib.import_module(modname), modname)
        if entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.get_plugin(ep.name) is not None:
                continue
            try:
                try:
                    module = ep.load()
                except (Exception, SystemExit) as e:
                    raise PluginError(f"plugin '{ep.name}' ({ep.value}) failed to load: "
                                      f"{_reason(e)}") from e
                self.register(module, ep.name, ep.value)
            except PluginError as e:
                # One broken package must not take down every graph and command: it is
                # left out, named once here and by `pipeline inspect`.
                dist = getattr(getattr(ep, "dist", None), "name", None)
                # The distribution is what pip uninstalls, not the entry point's name.
                fix = (f"uninstall the package {dist} (pip uninstall {dist})" if dist else
                       f"uninstall the package providing '{ep.name}'")
                which = ("the plugin" if e.message.startswith(f"plugin '{ep.name}'")
                         else f"plugin '{ep.name}'")
                err = PluginError(f"{e.message}; {which} is left out",
                                  hint=f"{e.hint}; or {fix}" if e.hint else f"fix or {fix}")
                self.broken.append(BrokenPlugin(ep.name, ep.value, str(err)))
                log.warning("%s", err)

    def register(self, module: Any, name: str, origin: str | None = None) -> None:
        """Register a plugin module (or object) and collect what it provides.

        All or nothing: a plugin with any mistake is unregistered again and adds nothing, so
        loading it again fails the same way. `origin` (its module) is named in errors.
        """
        if self.pm.get_plugin(name) is not None:
            return
        who = f"plugin '{name}'" + (f" ({origin})" if origin else "")
        try:
            self.pm.register(module, name=name)
        except pluggy.PluginValidationError as e:  # several lines: make them one
            hook = re.search(r"hook '(\w+)'", str(e))
            raise PluginError(
                f"{who} hook '{hook.group(1) if hook else '?'}': "
                + "; ".join(str(e).splitlines()[1:]),
                hint="match its spec in pipeline/hookspecs.py (an implementation may "
                     "take fewer arguments, never others)") from e
        except ValueError as e:  # the same module under another name
            raise PluginError(f"{who} cannot be registered: {e}".splitlines()[0]) from e
        try:
            node_types, codecs, formats = self._collect(module, name, who)
        except BaseException:
            self.pm.unregister(name=name)
            raise
        for cls in node_types:
            if cls.kind not in self.node_types:  # a re-export keeps its first plugin
                cls.plugin = name
                self.node_types[cls.kind] = cls
        self.codecs.update((c.name, c) for c in codecs)
        self.payload_formats.update((f.name, f) for f in formats)
        self._owners.update({**{("codec", c.name): name for c in codecs},
                             **{("payload format", f.name): name for f in formats}})

    def _collect(self, module: Any, name: str, who: str) -> tuple[list, list, list]:
        """What a freshly registered plugin provides, checked; raises PluginError."""
        try:
            self.pm.check_pending()  # pluggy flags an unknown hook only here
        except pluggy.PluginValidationError as e:
            unknown = [h.name for h in self.pm.get_hookcallers(module) or () if not h.has_spec()]
            raise PluginError(
                f"{who} implements unknown hook '{unknown[0] if unknown else '?'}'",
                hint="rename it to one of the hooks: " + ", ".join(HOOKS)) from e
        kinds: dict[str, type[Node]] = {}
        node_types = self._provided(self.pm.hook.register_node_types, name, who)
        for cls in node_types:
            self._check_node_type(cls, name, who)
            other = kinds.setdefault(cls.kind, cls)
            if other is not cls:
                raise PluginError(
                    f"{who} registers node kind '{cls.kind}' twice: {other.__qualname__} "
                    f"and {cls.__qualname__}", hint="give each class its own kind")
        codecs = self._provided(self.pm.hook.register_codecs, name, who)
        formats = self._provided(self.pm.hook.register_payload_formats, name, who)
        for what, items, like, have in (
                ("codec", codecs, "plugins.codecs.base.CodecInfo", self.codecs),
                ("payload format", formats, "plugins.rtp.payload.PayloadFormat",
                 self.payload_formats)):
            for item in items:
                if not isinstance(getattr(item, "name", None), str):
                    raise PluginError(f"{who} registers {what} {item!r}, which has no name",
                                      hint=f"return objects like {like}")
                old = have.get(item.name)
                if old is not None and old is not item:  # else one would silently win
                    raise PluginError(
                        f"{what} '{item.name}' is registered by both plugin "
                        f"'{self._owners.get((what, item.name), '?')}' and plugin '{name}'",
                        hint="rename it in one of the plugins, or uninstall one")
        for item in codecs:
            missing = [f for f in _CODEC_FIELDS if not hasattr(item, f)]
            if missing:  # the SIP plugin and rtp_session read them all
                raise PluginError(f"{who} registers codec '{item.name}' without "
                                  f"{', '.join(missing)}",
                                  hint="return plugins.codecs.base.CodecInfo objects")
        return node_types, codecs, formats

    @staticmethod
    def _provided(hook: Any, name: str, who: str) -> list[Any]:
        """What plugin `name`'s implementation of `hook` returns (nothing if it has none)."""
        impl = next((i for i in hook.get_hookimpls() if i.plugin_name == name), None)
        if impl is None:
            return []
        try:
            items = impl.function()
        except Exception as e:
            raise PluginError(f"{who} hook '{hook.name}' failed: {type(e).__name__}: {e}",
                              hint="fix the hook; --debug shows the traceback") from e
        if items is not None and not isinstance(items, (list, tuple)):
            raise PluginError(f"{who} hook '{hook.name}' returned {items!r}, not a list",
                              hint="return a list, e.g. [MyNode]")
        return list(items or [])

    def _check_node_type(self, cls: Any, plugin: str, who: str) -> None:
        """A node class's declarations, checked when it is registered so that its author
        sees a mistake at load, not when a graph uses the node."""
        if not (isinstance(cls, type) and issubclass(cls, Node)):
            raise PluginError(f"{who} registered {cls!r}, which is not a Node class",
                              hint="return subclasses of pipeline.node.Node that set `kind`")
        where = f"{who} node class {cls.__qualname__}"
        if not isinstance(cls.kind, str) or not _KIND_RE.fullmatch(cls.kind):
            raise PluginError(f"{where} has kind {cls.kind!r}, not a snake_case name",
                              hint="set kind to a name like 'my_node' (a-z, 0-9 and _)")
        old = self.node_types.get(cls.kind)
        if old is not None and old is not cls:
            raise PluginError(
                f"node kind '{cls.kind}' is registered by both plugin '{old.plugin}' and "
                f"plugin '{plugin}'",
                hint="rename the kind in one of the plugins, or uninstall one",
            )
        where = f"{where} ({cls.kind})"
        for direction in ("inputs", "outputs"):
            names = [getattr(p, "name", p) for p in getattr(cls, direction)]
            dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
            if dup is not None:
                raise PluginError(f"{where} has two {direction} named '{dup}'",
                                  hint="give each port its own name")
        specs = cls.param_specs()
        for pname, p in specs.items():
            if pname in _NODE_NAMES:
                raise PluginError(f"{where}: parameter '{pname}' is named like an "
                                  "attribute of Node", hint="rename the parameter")
            try:
                p.check()
            except ParamValueError as e:
                raise PluginError(f"{where}: {e.message}", hint=e.hint) from None
        try:  # the graph builds every node as cls(name, **params)
            inspect.signature(cls).bind("name", **dict.fromkeys(specs))
        except TypeError:
            raise PluginError(
                f"{where}: __init__{inspect.signature(cls.__init__)} cannot be called as "
                f"{cls.__qualname__}(name, **params)",
                hint="take (name, **params) and pass them to super().__init__") from None
        for method, args in NODE_METHODS.items():
            _check_method(cls, method, args, where)

    def load_file(self, path: str | Path,
                  where: str = "check the path under plugins: (relative to the YAML file)",
                  ) -> None:
        """Import a local plugin module (a .py file) named by a YAML graph's `plugins:` list
        (or by `--plugin`: `where` is the hint for a path that is not there)."""
        path = Path(path).resolve()
        if path.is_dir():
            files = sorted(p.name for p in path.glob("*.py") if p.name != "__init__.py")
            which = (f": {', '.join(files[:3])}{', ...' if len(files) > 3 else ''}" if files
                     else "")
            raise PluginError(
                f"plugin module '{path}' is a folder, not a .py file",
                hint="a plugin package is installed with pip and found through its entry "
                     "point (group voip_pipeline, docs/plugins.md); or name the module file "
                     f"in the folder{which}")
        if path.suffix != ".py":
            # importlib makes no module of other files (spec_from_file_location: None)
            raise PluginError(f"plugin module '{path}' is not a .py file",
                              hint="a plugin module is a Python file, e.g. ./my_nodes.py")
        key = str(path)  # the plugin's name: unique per file, whatever its file name
        if self.pm.get_plugin(key) is not None:
            return
        if not path.is_file():
            raise PluginError(f"plugin module '{path}' not found", hint=where)
        # Named from its path, so that `pipeline inspect` shows the same name on every run.
        modname = f"{_LOCAL}{path.stem}_{_digest(path)}"
        spec = importlib.util.spec_from_file_location(modname, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        try:
            _exec_beside(spec.loader, module, path.parent)
        except (Exception, SystemExit) as e:  # sys.exit() in a plugin must not end the CLI
            sys.modules.pop(modname, None)
            raise PluginError(f"plugin module '{path}' failed to import: {_reason(e)}",
                              hint="run it with python to see the full error") from e
        try:
            self.register(module, key)
        except PluginError:
            sys.modules.pop(modname, None)
            raise

    def node_type(self, kind: str) -> type[Node]:
        try:
            return self.node_types[kind]
        except KeyError:
            raise PluginError(f"unknown node type '{kind}'", hint=self.suggest(kind)) from None

    def suggest(self, kind: str) -> str:
        if looks_like_file(kind):
            # `path=a b.wav` unquoted: the value's second word reads as an element. Only a
            # file's name: a dotted word may be a Python path (`type: mypkg.Node`) or a
            # reference to a name not given (`t.src_0`).
            return (f"'{kind}' looks like part of a value with a space: quote the value, "
                    f"e.g. path=\"a {kind}\"")
        # A gst-launch caps filter: audio/x-raw,rate=8000, application/x-rtp,...
        if re.match(r"(audio|video|application|image|text)/[a-z0-9+-]+(\(|,|$)", kind,
                    re.IGNORECASE):
            caps = "formats are negotiated here, not filtered: a converter goes in where one is "
            if kind.lower().startswith("video/"):  # video/x-raw,width=320,height=240
                w, h = (v or d for v, d in zip(_caps_fields(kind, ("width", "height")),
                                               ("320", "240"), strict=True))
                return (caps + f"needed; to force one, name it, e.g. scale width={w} "
                        f"height={h} (video_test_source takes width, height and fps itself)")
            # The caps' own values: audio/x-raw,rate=16000,channels=2 wants them, not 8 kHz.
            fields = ("rate", "channels")
            given = " ".join(f"{f}={v}" for f, v in zip(fields, _caps_fields(kind, fields),
                                                         strict=True) if v is not None)
            return caps + f"needed; to force one, name it, e.g. resample {given or 'rate=8000'}"
        if kind in GSTREAMER_KINDS:  # a gst-launch user's element name
            ours = GSTREAMER_KINDS[kind]
            video = GSTREAMER_VIDEO_KINDS.get(kind)
            if ours is None:
                return f"GStreamer's {kind} is {NOT_NEEDED[kind]}"
            if video in self.node_types and ours in self.node_types:
                return (f"GStreamer's {kind} is '{ours}' (audio) or '{video}' (video) here "
                        f"(pipeline inspect {ours}, pipeline inspect {video})")
            if ours in self.node_types:
                return f"GStreamer's {kind} is '{ours}' here (pipeline inspect {ours})"
        pay = _RTP_PAY_RE.fullmatch(kind)
        if pay and "rtp_session" in self.node_types:
            codec = pay.group(1).lower()
            if codec in self.codecs:
                return (f"GStreamer's {kind} is 'rtp_session codec={codec}' here: one node "
                        "packs and sends RTP, and receives and unpacks it (pipeline inspect "
                        "rtp_session)")
            return (f"GStreamer's {kind} packs a codec that is not here: rtp_session codec= "
                    f"takes {', '.join(sorted(self.codecs))} (pipeline inspect lists them)")
        # A kind's last word says what it is (_sink, _encoder): `typo_sink` is nearer
        # `null_sink` than `rtp_session`, which plain string likeness would offer.
        loose = difflib.get_close_matches(kind, self.node_types, n=4, cutoff=0.4)
        tail = kind.rpartition("_")[2]
        same = [k for k in loose if "_" in kind and k.rpartition("_")[2] == tail]
        close = same[:1] or [k for k in difflib.get_close_matches(kind, self.node_types, n=1)
                             if _alike(kind, k)]
        hint = "'pipeline inspect' lists node types"
        if close:
            hint = f"did you mean '{close[0]}'? ({hint})"
        if self.broken:  # the kind may be theirs
            names = ", ".join(sorted(f"'{b.name}'" for b in self.broken))
            hint += f"; broken plugin(s) {names} failed to load and may provide it"
        return hint


# What the second word of an unquoted path ends with (`path=my take.wav`).
_FILE_SUFFIXES = frozenset(
    "wav flac mp3 ogg oga opus m4a aac aiff aif au raw pcm ul al g722 mp4 mkv webm mov avi "
    "ivf y4m h264 264 yuv pcap pcapng yaml yml json txt csv log svg png pdf dot".split())


def _caps_fields(caps: str, names: tuple[str, ...]) -> list[str | None]:
    """The whole-number values of fields `names` in a gst-launch caps filter
    (`audio/x-raw,rate=(int)16000,channels=2`), None for each one it does not give; a field
    is matched whole (`clock-rate=8000` is not a rate)."""
    found = [re.search(rf"(?:^|,)\s*{f}\s*=\s*(?:\(int\))?(\d+)", caps) for f in names]
    return [m.group(1) if m else None for m in found]


def looks_like_file(word: str) -> bool:
    """Whether `word` reads as a file's name (`b.wav`) rather than a node or `name.port`."""
    base = word.rpartition("/")[2]
    return "." in base and base.rpartition(".")[2].lower() in _FILE_SUFFIXES


def _check_method(cls: type[Node], method: str, args: tuple[str, ...], where: str) -> None:
    """That `cls`'s own `method`, where it overrides Node's, can be called as the framework
    calls it: with `args`, and (but for run_io, which is awaited) without awaiting it."""
    fn = inspect.getattr_static(cls, method, None)
    if not inspect.isfunction(fn) or fn is inspect.getattr_static(Node, method, None):
        return  # Node's own, or not a plain def (a staticmethod, a callable object)
    try:
        # The def itself, not what functools.wraps says it wraps: an adapter may change
        # the arguments (def adapter(self, port, frame) around a process(self, frame)).
        sig = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):  # nothing to check it against
        return
    code = fn.__code__
    fix = (f"{Path(code.co_filename).name} line {code.co_firstlineno}: define it as "
           f"def {method}(self{''.join(', ' + a for a in args)})")
    if method != "run_io" and inspect.iscoroutinefunction(fn):
        # Called, never awaited: the body would never run (a frame silently lost).
        raise PluginError(f"{where}: {method}() is async def, and the framework calls it "
                          "without awaiting it", hint=f"{fix}; I/O goes in async run_io()")
    try:
        sig.bind(None, *args)
    except TypeError:
        raise PluginError(
            f"{where}: {method}{sig} cannot be called as {method}({', '.join(args)})",
            hint=fix) from None


def _alike(typed: str, kind: str) -> bool:
    """Whether node kind `kind` is a likely meaning of the unknown `typed`: very alike, or
    fairly alike and starting as it or as one of its words do. Likeness alone offers
    another family's kind for a name that is not a typo (pcapparse -> capture, a node name
    rec -> aec), which sends a user the wrong way."""
    ratio = difflib.SequenceMatcher(None, kind, typed).ratio()
    if ratio >= 0.75:  # a typo: tonee, otne, mixr, pcmu_encodr
        return True
    return ratio >= 0.6 and (typed[:2] == kind[:2] or any(
        len(typed) >= 3 and word.startswith(typed[:3]) for word in kind.split("_")))


def _digest(path: Path) -> str:
    return hashlib.sha1(str(path).encode()).hexdigest()[:8]


def _exec_beside(loader: Any, module: Any, folder: Path) -> None:
    """Run a local plugin with its folder first on sys.path, as `python file.py` would, so
    it can import the modules beside it. Those are then kept under a name private to the
    folder (_voip_local_DIGEST.helpers): another folder's helpers.py is another module, and
    the plain name is free again. The plugin's own later imports (`import helpers` inside a
    function) find them the same way."""
    on_path = {Path(p or ".").resolve() for p in sys.path}
    if folder in on_path:  # importable anyway: its modules are everyone's
        loader.exec_module(module)
        return
    # Functions take their builtins from the module's globals when defined: this
    # __import__ is the one their import statements call, whenever they run.
    module.__dict__["__builtins__"] = {**builtins.__dict__, "__import__": _importer(folder)}
    with _beside(folder):
        loader.exec_module(module)


_BESIDE = threading.RLock()  # one folder on sys.path at a time (threads, nested imports)


@contextlib.contextmanager
def _beside(folder: Path) -> Iterator[None]:
    """`folder` first on sys.path and its modules under their plain names, for a while."""
    private = f"{_LOCAL}{_digest(folder)}."
    with _BESIDE:
        before = set(sys.modules)
        for name in [n for n in before if n.startswith(private)]:  # shared within the folder
            sys.modules.setdefault(name[len(private):], sys.modules[name])
        sys.path.insert(0, str(folder))
        try:
            yield
        finally:
            if str(folder) in sys.path:  # unless the plugin took it out itself
                sys.path.remove(str(folder))
            new = [n for n in sys.modules if n not in before and not n.startswith(_LOCAL)]
            # Only what the folder's sys.path entry found: a module below it found through
            # another entry (a .venv in the project folder: numpy) stays, else it would be
            # imported twice; a namespace package (a sub-folder without __init__.py) goes.
            tops = {n for n in new if "." not in n and _sibling(sys.modules[n], n, folder)}
            for name in new:
                if name.partition(".")[0] in tops:
                    sys.modules[private + name] = sys.modules.pop(name)


def _importer(folder: Path) -> Callable[..., Any]:
    """The __import__ of a local plugin from `folder`: a module beside it, by its plain name."""
    private = f"{_LOCAL}{_digest(folder)}."
    real = builtins.__import__

    def import_(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                level: int = 0) -> Any:
        top = name.partition(".")[0]
        if level or top in sys.modules:  # the common case: one dict look-up
            return real(name, globals, locals, fromlist, level)
        mod = sys.modules.get(private + name)
        if mod is not None and (not fromlist or all(
                f == "*" or hasattr(mod, f) for f in fromlist)):
            return mod if fromlist else sys.modules[private + top]
        if mod is None and private + top not in sys.modules and not (
                (folder / f"{top}.py").is_file() or (folder / top).is_dir()):
            return real(name, globals, locals, fromlist, level)
        with _beside(folder):
            return real(name, globals, locals, fromlist, level)

    return import_


def _sibling(module: Any, top: str, folder: Path) -> bool:
    """Whether the top-level `module` is `folder`/top.py (or .so), or the package `folder`/top."""
    file = getattr(module, "__file__", None)
    if file:
        p = Path(file).resolve()
        return p.parent == folder or (p.parent == folder / top and p.stem == "__init__")
    return any(Path(p).resolve() == folder / top for p in getattr(module, "__path__", ()))


def _reason(e: BaseException) -> str:
    """An exception as the end of a one-line message."""
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r})"
    return str(e) or type(e).__name__


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (built on first use)."""
    global _default
    if _default is None:
        _default = Registry()
    return _default
