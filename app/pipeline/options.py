"""Transcription options of a job, parsed from form fields or the query string."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from app.media.cuerules import ALIASES, PRESET_KEY, RULE_KEYS, CueRules, RuleError, parse_overrides, resolve
from app.pipeline.errors import InvalidRequest
from batching.types import DecodeOptions

# Whisper's language codes (tokenizer.py of openai/whisper), so a typo fails at upload time.
LANGUAGES = frozenset(
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la "
    "mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be "
    "tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue".split()
)
MAX_PROMPT_CHARS = 1000
MAX_BEAM_SIZE = 10
DECODING = ("language", "task", "word_timestamps", "vad", "initial_prompt", "beam_size", "condition_on_previous_text")
# Subtitle line rules (app/media/cuerules.py), under their names and whisper's command-line ones.
SUBTITLE_OPTIONS = (PRESET_KEY, *RULE_KEYS, *ALIASES)
KNOWN = (*DECODING, *SUBTITLE_OPTIONS)
# Parameters that travel in the same query string but are not transcription options.
TRANSPORT = frozenset({"filename"})


def bad_option(name: str, message: str) -> InvalidRequest:
    return InvalidRequest("invalid_option", f"{name}: {message}", field=name)


def as_bool(raw: Any) -> bool | None:
    """True/False for the spellings people use (1/0, true/false, yes/no, on/off), else None."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    return None


def parse_bool(name: str, raw: Any) -> bool:
    value = as_bool(raw)
    if value is None:
        raise bad_option(name, f"expected true or false, got {str(raw)[:40]!r}")
    return value


@dataclass(frozen=True)
class DecodingDefaults:
    """What a job that leaves beam_size or condition_on_previous_text unset gets."""

    beam_size: int = 1
    condition_on_previous_text: bool = False


def parse_int(name: str, raw: Any, low: int, high: int) -> int:
    if isinstance(raw, bool):
        raise bad_option(name, f"expected a whole number from {low} to {high}, got {raw!r}")
    text = str(raw).strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        raise bad_option(name, f"expected a whole number from {low} to {high}, got {text[:40]!r}")
    value = int(text)
    if not low <= value <= high:
        raise bad_option(name, f"expected a whole number from {low} to {high}, got {value}")
    return value


@dataclass(frozen=True)
class JobOptions:
    language: str | None = None  # None: detect
    task: str = "transcribe"
    word_timestamps: bool = False
    vad: bool = True
    initial_prompt: str | None = None
    # None: the server's default ([decoding] in the config), read when the job runs.
    beam_size: int | None = None
    condition_on_previous_text: bool | None = None
    # Subtitle line rules chosen for this job (canonical names), over the server's [subtitles].
    subtitles: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> JobOptions:
        unknown = sorted(k for k in raw if k not in KNOWN and k not in TRANSPORT)
        if unknown:
            raise InvalidRequest(
                "unknown_option",
                f"Unknown option {unknown[0][:60]!r}; known options are {', '.join(KNOWN)}.",
                field=unknown[0][:60],
            )
        language: str | None = None
        if (lang := raw.get("language")) not in (None, ""):
            lang = str(lang).strip().lower()
            if lang != "auto":
                if lang not in LANGUAGES:
                    raise bad_option("language", f"{lang[:20]!r} is not a Whisper language code (use e.g. en, de, tr, or auto)")
                language = lang
        task = str(raw.get("task") or "transcribe").strip().lower()
        if task not in ("transcribe", "translate"):
            raise bad_option("task", f"expected transcribe or translate, got {task[:40]!r}")
        prompt = raw.get("initial_prompt")
        if prompt is not None:
            prompt = str(prompt)
            if len(prompt) > MAX_PROMPT_CHARS:
                raise bad_option("initial_prompt", f"longer than {MAX_PROMPT_CHARS} characters")
            if "\x00" in prompt:
                raise bad_option("initial_prompt", "contains a NUL character")
            prompt = prompt.strip() or None
        beam_size = None
        if (raw_beam := raw.get("beam_size")) not in (None, ""):
            beam_size = parse_int("beam_size", raw_beam, 1, MAX_BEAM_SIZE)
        condition = None
        if (raw_cond := raw.get("condition_on_previous_text")) not in (None, ""):
            condition = parse_bool("condition_on_previous_text", raw_cond)
        try:
            subtitles = parse_overrides(raw)
            resolve(CueRules(), subtitles)  # min longer than max, say
        except RuleError as exc:
            raise bad_option(exc.field, exc.message.split(": ", 1)[1]) from None
        return cls(
            language=language,
            task=task,
            word_timestamps=parse_bool("word_timestamps", raw.get("word_timestamps", False)),
            vad=parse_bool("vad", raw.get("vad", True)),
            initial_prompt=prompt,
            beam_size=beam_size,
            condition_on_previous_text=condition,
            subtitles=subtitles,
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["subtitles"] = dict(self.subtitles)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobOptions:
        return cls(**{k: data[k] for k in (*DECODING, "subtitles") if k in data})

    def subtitle_rules(self, defaults: CueRules) -> CueRules:
        """The server's rules with this job's choices on top."""
        return resolve(defaults, self.subtitles)

    def with_words_for(self, defaults: CueRules) -> JobOptions:
        """Word timestamps on where line rules are on: cues are then cut at the words' own times."""
        if self.word_timestamps or not self.subtitle_rules(defaults).enabled:
            return self
        return replace(self, word_timestamps=True)

    def conditioned(self, defaults: DecodingDefaults) -> bool:
        if self.condition_on_previous_text is None:
            return defaults.condition_on_previous_text
        return self.condition_on_previous_text

    def decode_options(self, *, multilingual: bool, defaults: DecodingDefaults = DecodingDefaults()) -> DecodeOptions:
        language = self.language
        if not multilingual:
            language = "en"  # an English-only model has no language token to choose
        return DecodeOptions(
            language=language,
            task=self.task if multilingual else "transcribe",
            initial_prompt=self.initial_prompt,
            word_timestamps=self.word_timestamps,
            beam_size=self.beam_size or defaults.beam_size,
        )
