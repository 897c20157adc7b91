"""Exporting a job's media with its subtitles: burned into the picture, or muxed as a track.

*burn* draws an ASS file (built here with pysubs2, styled from :class:`ExportStyle`)
onto the video with libass and re-encodes the picture (H.264, or VP9 for WebM).
*soft* adds a subtitle track without re-encoding what the container can hold:
MP4 gets ``mov_text``, MKV gets SRT, WebM gets WebVTT. A stream the container cannot
hold (say PCM audio in MP4, or H.264 in WebM) is transcoded, not refused: WebM video
becomes VP9 and its audio Opus, MP4/MKV audio becomes AAC. An audio-only source gives
an audio file with a subtitle track (any container); *burn* needs a video stream.

The subtitle files live in the export's ``work_dir`` under fixed names chosen here,
so nothing the user typed ever appears in an ffmpeg filter string.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pysubs2

from app.media.demuxers import whitelist_args
from app.media.ffmpeg import FfmpegPool, file_url, fraction_reporter
from app.media.cuerules import ALIASES, DEFAULT_RULES, PRESET_KEY, RULE_KEYS, Cue, CueRules, RuleError, apply_rules, parse_overrides, resolve, tokens_of
from app.media.formats import strip_overrides, to_subtitles
from app.media.probe import MediaInfo
from batching.types import Segment

Mode = Literal["burn", "soft"]
Container = Literal["mp4", "mkv", "webm"]

MODES: tuple[str, ...] = ("burn", "soft")
CONTAINERS: tuple[str, ...] = ("mp4", "mkv", "webm")
PRESETS: tuple[str, ...] = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)  # fmt: skip

# The ASS download (app.api.routes): media type and extension, beside app.media.formats.FORMATS.
ASS_FORMAT = ("text/x-ssa; charset=utf-8", "ass")
# Words already said, in a karaoke ASS download (yellow; the rest in the style's colour).
KARAOKE_COLOUR = "#FFFF00"
# Keys of an export's "subtitles" object: the line rules under their request names.
RULE_PARAMS: tuple[str, ...] = ("preset", PRESET_KEY, *RULE_KEYS, *ALIASES)

# The reference height the style's sizes are given in: 48 means 48/1080 of the frame height.
PLAY_RES_Y = 1080

_MUXER = {"mp4": "mp4", "mkv": "matroska", "webm": "webm"}
# Codecs each container takes as they are (None: any). Anything else is transcoded.
_COPY_VIDEO: dict[str, frozenset[str] | None] = {
    "mp4": frozenset({"h264", "hevc", "av1", "vp9", "mpeg4"}),
    "mkv": None,
    "webm": frozenset({"vp8", "vp9", "av1"}),
}
_COPY_AUDIO: dict[str, frozenset[str] | None] = {
    "mp4": frozenset({"aac", "mp3", "alac", "ac3", "eac3"}),
    "mkv": None,
    "webm": frozenset({"opus", "vorbis"}),
}
# Soft track: (file written here, its demuxer, the codec in the output).
# MKV and WebM copy the text as written (ffmpeg's decode/encode round trip would turn
# escaped "&lt;b&gt;" back into markup); MP4 needs mov_text, converted from the SRT.
_SOFT_SUBS = {"mp4": ("subs.srt", "srt", "mov_text"), "mkv": ("subs.srt", "srt", "copy"), "webm": ("subs.vtt", "webvtt", "copy")}
_BURN_SUBS = "subs.ass"

# Whisper's language codes -> ISO 639-2/T, the three letters MP4 and Matroska tag tracks with.
WHISPER_TO_ISO639_2: dict[str, str] = {
    "en": "eng", "zh": "zho", "de": "deu", "es": "spa", "ru": "rus", "ko": "kor", "fr": "fra", "ja": "jpn",
    "pt": "por", "tr": "tur", "pl": "pol", "ca": "cat", "nl": "nld", "ar": "ara", "sv": "swe", "it": "ita",
    "id": "ind", "hi": "hin", "fi": "fin", "vi": "vie", "he": "heb", "uk": "ukr", "el": "ell", "ms": "msa",
    "cs": "ces", "ro": "ron", "da": "dan", "hu": "hun", "ta": "tam", "no": "nor", "th": "tha", "ur": "urd",
    "hr": "hrv", "bg": "bul", "lt": "lit", "la": "lat", "mi": "mri", "ml": "mal", "cy": "cym", "sk": "slk",
    "te": "tel", "fa": "fas", "lv": "lav", "bn": "ben", "sr": "srp", "az": "aze", "sl": "slv", "kn": "kan",
    "et": "est", "mk": "mkd", "br": "bre", "eu": "eus", "is": "isl", "hy": "hye", "ne": "nep", "mn": "mon",
    "bs": "bos", "kk": "kaz", "sq": "sqi", "sw": "swa", "gl": "glg", "mr": "mar", "pa": "pan", "si": "sin",
    "km": "khm", "sn": "sna", "yo": "yor", "so": "som", "af": "afr", "oc": "oci", "ka": "kat", "be": "bel",
    "tg": "tgk", "sd": "snd", "gu": "guj", "am": "amh", "yi": "yid", "lo": "lao", "uz": "uzb", "fo": "fao",
    "ht": "hat", "ps": "pus", "tk": "tuk", "nn": "nno", "mt": "mlt", "sa": "san", "lb": "ltz", "my": "mya",
    "bo": "bod", "tl": "tgl", "mg": "mlg", "as": "asm", "tt": "tat", "haw": "haw", "ln": "lin", "ha": "hau",
    "ba": "bak", "jw": "jav", "jv": "jav", "su": "sun", "yue": "yue",
}  # fmt: skip


class ExportOptionError(ValueError):
    """A bad export request; maps to HTTP 422 with the field named."""

    status = 422
    code = "invalid_export_option"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = f"Export option '{field}' is invalid: {message}"


def iso639_2(language: str | None) -> str:
    """Whisper's code (``en``) as a track language tag (``eng``); ``und`` when unknown."""
    if not language:
        return "und"
    code = language.strip().lower()
    if code in WHISPER_TO_ISO639_2:
        return WHISPER_TO_ISO639_2[code]
    return code if re.fullmatch(r"[a-z]{3}", code) else "und"


# -- options -----------------------------------------------------------------

_COLOUR = re.compile(r"#([0-9a-fA-F]{6})([0-9a-fA-F]{2})?")


def _parse_colour(field_name: str, value: Any) -> pysubs2.Color:
    if not isinstance(value, str) or not _COLOUR.fullmatch(value):
        raise ExportOptionError(field_name, f"expected a colour like \"#FFFFFF\" or \"#FFFFFF80\", got {value!r}")
    rgb, alpha = _COLOUR.fullmatch(value).groups()  # type: ignore[union-attr]
    r, g, b = (int(rgb[i : i + 2], 16) for i in (0, 2, 4))
    opacity = int(alpha, 16) if alpha else 255
    return pysubs2.Color(r, g, b, 255 - opacity)  # ASS alpha is transparency, CSS alpha opacity


def _number(field_name: str, value: Any, lo: float, hi: float, *, integer: bool) -> Any:
    # bool is an int in Python; true/false is never a size.
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or not lo <= value <= hi:
        kind = "a whole number" if integer else "a number"
        raise ExportOptionError(field_name, f"expected {kind} from {lo:g} to {hi:g}, got {value!r}")
    return value


def _choice(field_name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ExportOptionError(field_name, f"expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _check_keys(prefix: str, d: Any, allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ExportOptionError(prefix.rstrip(".") or "body", "expected a JSON object")
    for key in d:
        if key not in allowed:
            raise ExportOptionError(f"{prefix}{key}", f"unknown option; known ones are {', '.join(allowed)}")
    return d


@dataclass(frozen=True)
class ExportStyle:
    font: str = "DejaVu Sans"
    size: int = 48  # in 1/1080 of the frame height, whatever the resolution
    primary_colour: str = "#FFFFFF"
    outline_colour: str = "#000000"
    outline_width: float = 3  # same units as size
    position: Literal["bottom", "top"] = "bottom"
    margin: int = 40  # from the bottom (or top) edge, same units as size
    # The line rules' max_chars_per_line, kept here for older clients; None: the job's rules.
    max_chars_per_line: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExportStyle:
        d = _check_keys("style.", d, [f.name for f in cls.__dataclass_fields__.values()])
        font = d.get("font", cls.font)
        # The font name lands in a comma-separated ASS style line: keep it to plain names.
        if not isinstance(font, str) or not re.fullmatch(r"[\w .\-]{1,64}", font) or not font.strip():
            raise ExportOptionError("style.font", f"expected a font family name (letters, digits, spaces, . - _), got {font!r}")
        style = cls(
            font=font.strip(),
            size=_number("style.size", d.get("size", cls.size), 8, 200, integer=True),
            primary_colour=d.get("primary_colour", cls.primary_colour),
            outline_colour=d.get("outline_colour", cls.outline_colour),
            outline_width=float(_number("style.outline_width", d.get("outline_width", cls.outline_width), 0, 20, integer=False)),
            position=_choice("style.position", d.get("position", cls.position), ("bottom", "top")),  # type: ignore[arg-type]
            margin=_number("style.margin", d.get("margin", cls.margin), 0, 500, integer=True),
            max_chars_per_line=None if d.get("max_chars_per_line") is None else _number("style.max_chars_per_line", d["max_chars_per_line"], 10, 200, integer=True),
        )
        _parse_colour("style.primary_colour", style.primary_colour)
        _parse_colour("style.outline_colour", style.outline_colour)
        return style


@dataclass(frozen=True)
class ExportOptions:
    mode: Mode
    container: Container = "mp4"
    style: ExportStyle = field(default_factory=ExportStyle)
    crf: int = 23
    preset: str = "veryfast"
    # Subtitle line rules for this export (app/media/cuerules.py names), over the job's.
    subtitles: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, default_crf: int = 23, default_preset: str = "veryfast") -> ExportOptions:
        """Validate a request body; ``default_*`` come from the ``[ffmpeg]`` config."""
        d = _check_keys("", d, ("mode", "container", "style", "crf", "preset", "subtitles"))
        if "mode" not in d:
            raise ExportOptionError("mode", "missing; use \"burn\" (draw on the picture) or \"soft\" (a subtitle track)")
        raw_rules = _check_keys("subtitles.", {} if d.get("subtitles") is None else d["subtitles"], RULE_PARAMS)
        try:
            subtitles = parse_overrides(raw_rules, preset_names=("preset", "subtitle_preset"))
            resolve(DEFAULT_RULES, subtitles)
        except RuleError as exc:
            raise ExportOptionError(f"subtitles.{exc.field}", exc.message.split(": ", 1)[1]) from None
        return cls(
            mode=_choice("mode", d["mode"], MODES),  # type: ignore[arg-type]
            container=_choice("container", d.get("container", "mp4"), CONTAINERS),  # type: ignore[arg-type]
            style=ExportStyle.from_dict({} if d.get("style") is None else d["style"]),
            crf=_number("crf", d.get("crf", default_crf), 0, 51, integer=True),
            preset=_choice("preset", d.get("preset", default_preset), PRESETS),
            subtitles=subtitles,
        )

    def rules(self, job_rules: CueRules) -> CueRules:
        """The job's rules with this export's on top; ``style.max_chars_per_line`` last."""
        layers: list[dict[str, Any]] = [self.subtitles]
        if self.style.max_chars_per_line is not None:
            layers.append({"max_chars_per_line": self.style.max_chars_per_line})
        return resolve(job_rules, *layers)


# -- subtitle text -------------------------------------------------------------


def _ass_escape(text: str) -> str:
    # A transcript is plain text, never ASS markup: "{\an8}" or "\N" typed by a user
    # must show as typed. libass reads \{ and \} as literal braces; a word joiner
    # (invisible) after a backslash keeps "\N", "\h" and friends from being commands.
    return text.replace("\\", "\\\u2060").replace("{", "\\{").replace("}", "\\}").replace("\n", "\\N")


def _play_res(width: int | None, height: int | None) -> tuple[int, int]:
    if width and height:
        return max(1, round(PLAY_RES_Y * width / height)), PLAY_RES_Y
    return round(PLAY_RES_Y * 16 / 9), PLAY_RES_Y


def _cues(segments: Sequence[Segment]) -> list[Segment]:
    # Override blocks ({\an8}) are dropped from every rendering (app.media.formats).
    cues = (replace(s, text=strip_overrides(s.text)) for s in segments)
    return sorted((s for s in cues if s.text.strip() and s.end > s.start), key=lambda s: (s.start, s.end))


def _rule_cues(segments: Sequence[Segment], rules: CueRules) -> list[Cue]:
    """Cues by ``rules``; with the rules off, one single-line cue per segment (libass wraps it)."""
    if rules.enabled:
        return apply_rules(_cues(segments), rules)
    return [Cue(s.start, s.end, (tuple(tokens_of(s)),)) for s in _cues(segments)]


def _karaoke(cue: Cue) -> str:
    r"""The cue's text with a ``{\kN}`` before each word (N in centiseconds), from the words' times.

    A pause before a word is an empty ``{\kN}``, so each word lights up when it is said.
    """
    parts: list[str] = []
    at = cue.start
    for n, line in enumerate(cue.lines):
        if n:
            parts.append("\\N")
        for i, token in enumerate(line):
            if token.space and i:
                parts.append(" ")
            if token.start - at >= 0.01:
                parts.append(f"{{\\k{round((token.start - at) * 100)}}}")
                at = token.start
            end = max(token.end, at)
            parts.append(f"{{\\k{round((end - at) * 100)}}}{_ass_escape(token.text)}")
            at = end
    return "".join(parts)


def build_ass(
    segments: Sequence[Segment],
    style: ExportStyle,
    *,
    width: int | None,
    height: int | None,
    rules: CueRules = DEFAULT_RULES,
    karaoke: bool = False,
) -> str:
    """An ASS script whose sizes are relative to a 1080-line frame, so they scale with the video.

    Cues follow the line ``rules``. With ``karaoke``, a cue whose words have
    their own times gets karaoke tags, so players light each word up as it is said
    (the style's primary colour sung, white still to come); other cues are plain.
    """
    subs = pysubs2.SSAFile()
    play_x, play_y = _play_res(width, height)
    subs.info.update(
        {
            "PlayResX": str(play_x),
            "PlayResY": str(play_y),
            "ScaledBorderAndShadow": "yes",  # outline in PlayRes units too
            "WrapStyle": "0",  # libass still wraps a line we left too wide for the frame
        }
    )
    subs.styles["Default"] = pysubs2.SSAStyle(
        fontname=style.font,
        fontsize=style.size,
        primarycolor=_parse_colour("style.primary_colour", KARAOKE_COLOUR if karaoke else style.primary_colour),
        secondarycolor=_parse_colour("style.primary_colour", style.primary_colour),
        outlinecolor=_parse_colour("style.outline_colour", style.outline_colour),
        backcolor=pysubs2.Color(0, 0, 0, 128),
        outline=style.outline_width,
        shadow=0,
        borderstyle=1,
        alignment=pysubs2.Alignment.BOTTOM_CENTER if style.position == "bottom" else pysubs2.Alignment.TOP_CENTER,
        marginl=round(play_x * 0.05),
        marginr=round(play_x * 0.05),
        marginv=style.margin,
    )
    for cue in _rule_cues(segments, rules):
        timed = karaoke and all(t.timed for t in cue.tokens)
        subs.events.append(
            pysubs2.SSAEvent(
                start=round(cue.start * 1000),
                end=round(cue.end * 1000),
                style="Default",
                text=_karaoke(cue) if timed else _ass_escape(cue.text),
            )
        )
    return subs.to_string("ass")


def build_text_subs(segments: Sequence[Segment], fmt: Literal["srt", "vtt"], rules: CueRules = DEFAULT_RULES) -> str:
    """SRT or WebVTT for a soft track: the transcript's own writer, cues by the line ``rules``.

    Not pysubs2's writers, which pass ``<b>``, ``&`` and ``{...}`` through (and
    strip the last), so a transcript would turn into markup.
    """
    cues = _rule_cues(segments, rules)
    return to_subtitles([Segment(c.start, c.end, c.text) for c in cues], fmt)


# -- names -----------------------------------------------------------------------


def escape_filter_path(path: str) -> str:
    """Quote a path for a filter option value inside an ``-vf`` graph (ffmpeg's two escaping levels).

    Level one is the option value (``\\ ' :`` are special), level two the filter graph
    (``\\ ' [ ] , ;``); see "Notes on filtergraph escaping" in ffmpeg-filters(1).
    No shell is involved, so there is no third level.
    """
    value = re.sub(r"([\\':])", r"\\\1", path)
    return re.sub(r"([\\'\[\],;])", r"\\\1", value)


def output_name(original_filename: str, mode: str, container: str) -> str:
    """A download name such as ``talk_subtitled.mp4``: no path, no control or reserved characters."""
    base = re.split(r"[\\/]", original_filename or "")[-1]
    stem = os.path.splitext(base)[0] if "." in base.lstrip(".") else base
    stem = unicodedata.normalize("NFC", stem)
    stem = "".join(ch if (ch.isalnum() or ch in " -_.()") else "_" for ch in stem)
    stem = re.sub(r"[_ ]{2,}", "_", stem).strip(" ._")[:100].strip(" ._") or "media"
    suffix = "subtitled" if mode == "burn" else "subs"
    return f"{stem}_{suffix}.{container}"


# -- rendering -----------------------------------------------------------------


def _audio_args(media: MediaInfo, container: str) -> list[str]:
    if not media.has_audio:
        return []
    allowed = _COPY_AUDIO[container]
    if allowed is None or media.audio_codec in allowed:
        return ["-c:a", "copy"]
    if container == "webm":
        return ["-c:a", "libopus", "-b:a", "128k"]
    return ["-c:a", "aac", "-b:a", "160k"]


def _video_encode_args(container: str, options: ExportOptions) -> list[str]:
    if container == "webm":
        # VP9's CRF scale runs to 63; map x264's 0..51 onto it. Realtime settings keep
        # VP9 within a few times the cost of x264 veryfast instead of tens of times.
        crf = round(options.crf * 63 / 51)
        return ["-c:v", "libvpx-vp9", "-crf", str(crf), "-b:v", "0", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1", "-pix_fmt", "yuv420p"]  # fmt: skip
    return ["-c:v", "libx264", "-crf", str(options.crf), "-preset", options.preset, "-pix_fmt", "yuv420p"]


def _burn_args(media: MediaInfo, options: ExportOptions, ass_path: Path, source: Path, tmp: Path) -> list[str]:
    vf = f"subtitles=filename={escape_filter_path(str(ass_path))}"
    if (media.width or 0) % 2 or (media.height or 0) % 2:
        vf += ",scale=trunc(iw/2)*2:trunc(ih/2)*2"  # yuv420p needs even sizes
    args = ["-i", file_url(source), "-map", "0:V:0"]
    if media.has_audio:
        args += ["-map", "0:a:0"]
    args += ["-vf", vf, *_video_encode_args(options.container, options), *_audio_args(media, options.container)]
    return args + _container_args(options.container, tmp)


def _soft_args(media: MediaInfo, options: ExportOptions, sub_path: Path, sub_format: str, sub_codec: str, language: str | None, source: Path, tmp: Path) -> list[str]:  # fmt: skip
    # The subtitle file is altyazi's own, read with its one demuxer; the upload gets
    # the media whitelist from the pool (app.media.demuxers).
    args = ["-i", file_url(source), *whitelist_args(sub_format), "-f", sub_format, "-i", file_url(sub_path)]
    if media.has_video:
        args += ["-map", "0:V:0"]  # V: a real picture, never mp3 cover art
    if media.has_audio:
        args += ["-map", "0:a:0"]
    args += ["-map", "1:0"]
    if media.has_video:
        allowed = _COPY_VIDEO[options.container]
        if allowed is None or media.video_codec in allowed:
            args += ["-c:v", "copy"]
        else:
            args += _video_encode_args(options.container, options)
    args += _audio_args(media, options.container)
    args += ["-c:s", sub_codec, "-metadata:s:s:0", f"language={iso639_2(language)}", "-disposition:s:0", "default"]
    return args + _container_args(options.container, tmp)


def _container_args(container: str, tmp: Path) -> list[str]:
    extra = ["-movflags", "+faststart"] if container == "mp4" else []  # playable while downloading
    return [*extra, "-f", _MUXER[container], file_url(tmp)]


async def render_export(
    pool: FfmpegPool,
    *,
    source: Path,
    media: MediaInfo,
    segments: Sequence[Segment],
    options: ExportOptions,
    language: str | None,
    work_dir: Path,
    dest: Path,
    on_progress: Callable[[float], None] | None = None,
    owner: str = "",
    rules: CueRules = DEFAULT_RULES,
) -> None:
    """Render ``source`` with ``segments`` to ``dest`` (complete or absent, never partial).

    It waits in the pool as ``owner``'s render: behind every audio extraction,
    in turn with other owners' renders.

    ``work_dir`` must belong to this export alone (the subtitle files in it have fixed
    names). Raises :class:`ExportOptionError` before starting ffmpeg for impossible
    requests, :class:`~app.media.ffmpeg.FfmpegError` (or its ``FfmpegTimeout``/``DiskFull``)
    when ffmpeg fails.
    """
    if options.mode == "burn" and not media.has_video:
        raise ExportOptionError("mode", "burn needs a video stream; this file is audio only, use \"soft\" instead")
    if options.mode == "soft" and not _cues(segments):
        raise ExportOptionError("mode", "the transcript has no text to put in a subtitle track; edit it or use \"burn\"")
    work_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - one directory entry, no data to wait for
    tmp = dest.with_name(f".{dest.name}.part")
    written: list[Path] = []
    try:
        if options.mode == "burn":
            sub_path = work_dir / _BURN_SUBS
            sub_path.write_text(build_ass(segments, options.style, width=media.width, height=media.height, rules=rules), encoding="utf-8")
            written.append(sub_path)
            args = _burn_args(media, options, sub_path.resolve(), source, tmp)
        else:
            name, sub_format, sub_codec = _SOFT_SUBS[options.container]
            sub_path = work_dir / name
            text_format: Literal["srt", "vtt"] = "srt" if sub_format == "srt" else "vtt"
            sub_path.write_text(build_text_subs(segments, text_format, rules), encoding="utf-8")
            written.append(sub_path)
            args = _soft_args(media, options, sub_path, sub_format, sub_codec, language, source, tmp)
        report = fraction_reporter(media.duration_s, on_progress) if on_progress is not None else None
        await pool.run(args, on_progress=report, kind="render", owner=owner)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for path in written:
            path.unlink(missing_ok=True)
