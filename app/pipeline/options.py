"""Transcription options of a job, parsed from form fields or the query string."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from app.pipeline.errors import InvalidRequest
from batching.types import DecodeOptions

# Whisper's language codes (tokenizer.py of openai/whisper), so a typo fails at upload time.
LANGUAGES = frozenset(
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la "
    "mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be "
    "tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue".split()
)
MAX_PROMPT_CHARS = 1000
KNOWN = ("language", "task", "word_timestamps", "vad", "initial_prompt")
# Parameters that travel in the same query string but are not transcription options.
TRANSPORT = frozenset({"filename"})


def bad_option(name: str, message: str) -> InvalidRequest:
    return InvalidRequest("invalid_option", f"{name}: {message}", field=name)


def parse_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise bad_option(name, f"expected true or false, got {str(raw)[:40]!r}")


@dataclass(frozen=True)
class JobOptions:
    language: str | None = None  # None: detect
    task: str = "transcribe"
    word_timestamps: bool = False
    vad: bool = True
    initial_prompt: str | None = None

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
        return cls(
            language=language,
            task=task,
            word_timestamps=parse_bool("word_timestamps", raw.get("word_timestamps", False)),
            vad=parse_bool("vad", raw.get("vad", True)),
            initial_prompt=prompt,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobOptions:
        return cls(**{k: data[k] for k in KNOWN if k in data})

    def decode_options(self, *, multilingual: bool) -> DecodeOptions:
        language = self.language
        if not multilingual:
            language = "en"  # an English-only model has no language token to choose
        return DecodeOptions(
            language=language,
            task=self.task if multilingual else "transcribe",
            initial_prompt=self.initial_prompt,
            word_timestamps=self.word_timestamps,
        )
