"""The model-thread side of the Whisper engine: the only code that touches CTranslate2.

A :class:`WhisperRunner` turns a list of windows (from any number of jobs) into one
batched ``encode``, at most one batched ``detect_language``, one ``generate`` per
(temperature, beam size) group and one ``align`` per (language, task) group. Every
row keeps its own prompt (language, task, initial prompt), so windows of different
jobs share a batch without sharing decoding choices.

faster-whisper's ``WhisperModel`` is used only to load the model, the tokenizer and
the feature extractor, and for its segmenting, prompting and word-timing helpers;
its ``transcribe`` loop (one file at a time) is not used.

Threading: :meth:`WhisperRunner.prepare` runs in CPU threads ahead of the model;
:meth:`WhisperRunner.run` runs in the single model thread. Neither touches the
event loop.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from batching.encoder_cache import EncoderCache
from batching.segmenting import split_tokens
from batching.types import (
    WINDOW_SAMPLES,
    Segment,
    WindowRequest,
    WindowResult,
    Word,
)

# Decoding constants that faster-whisper exposes per call and that the product
# does not: they stay at faster-whisper's defaults.
BEST_OF = 5  # candidates sampled per window at temperature > 0
MAX_LENGTH = 448  # Whisper's text context, prompt included
MAX_INITIAL_TIMESTAMP_INDEX = 50  # first timestamp at most 1.0 s into the window
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
N_FRAMES = 3000  # mel frames in a 30 s window: the encoder's fixed input length
# Context tokens before <|startoftranscript|>: Whisper's limit (half its text
# context, less the <|startofprev|> token), as faster-whisper cuts it.
MAX_PREVIOUS_TOKENS = MAX_LENGTH // 2 - 1
# Rows with different context lengths cannot share a generate call (see
# WhisperRunner._run_rows). A window conditioned on the previous window's text has its
# context shortened to a multiple of this (dropping its oldest few tokens), so
# conditioned windows of different jobs still batch together.
CONTEXT_BUCKET = 16
# Encoder input lengths (mel frames) for trimmed short windows, and the silence
# kept after the audio: a window shorter than 30 s by enough is encoded at the
# smallest bucket that holds it (see WhisperRunner.encoder_frames).
TRIM_BUCKETS = (1000, 1500, 2000)
TRIM_MARGIN_FRAMES = 100
# The encoder cache's default bound: about 100 tiny/base windows, 30 large ones.
DEFAULT_ENCODER_CACHE_BYTES = 256 * 2**20


def _split(idx: list[int], parts: int) -> list[list[int]]:
    """``idx`` in at most ``parts`` contiguous shares whose sizes differ by at most one."""
    parts = max(1, min(parts, len(idx)))
    size, extra = divmod(len(idx), parts)
    out, at = [], 0
    for p in range(parts):
        take = size + (1 if p < extra else 0)
        out.append(idx[at : at + take])
        at += take
    return out


def cpu_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_cpu_layout(cores: int, replicas: int = 0, threads: int = 0) -> tuple[int, int]:
    """(replicas, threads per replica) for a CPU model; 0 means choose.

    Up to 4 replicas, one per core on small machines: measured on 2 cores,
    two one-thread replicas decode a batch 1.2-1.5x faster than one model
    on two threads, which gains little from its second thread. On
    big CPUs the replicas get several threads each, so a batch is not cut
    into shares too small to gain from batching.
    """
    cores = max(1, cores)
    if replicas <= 0:
        replicas = min(4, cores) if threads <= 0 else max(1, min(4, cores // threads))
    if threads <= 0:
        threads = max(1, cores // replicas)
    return replicas, threads


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what the operator named: a local CTranslate2 folder or a model name
    device: str  # "cpu" or "cuda", after "auto" is resolved
    compute_type: str  # after "default" is resolved
    multilingual: bool
    n_mels: int


@dataclass(frozen=True)
class Attempt:
    """What one temperature produced for one window, with the numbers used to judge it."""

    result: WindowResult
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


@dataclass(frozen=True)
class Fallback:
    """The window failed the compression-ratio or log-prob check at this temperature.

    ``retry`` is True when a warmer temperature is left: the caller submits the
    window again with ``temperature_index + 1``. When it is False every temperature
    has been tried and the caller picks the best attempt (:func:`best_attempt`).
    """

    attempt: Attempt
    retry: bool


@dataclass
class PreparedBatch:
    """What ``prepare`` hands to ``run``, per window that could be read.

    A row has either mel features (``[n_mels, frames]``, ``frames`` a multiple of
    the encoder's stride, at most 3000) or, for a window decoded again after a
    fallback, its kept encoder output (``[frames // 2, d_model]``).
    """

    rows: list[int]  # index into the window list of each readable row
    features: list[np.ndarray | None]  # per row: mel features, None when cached
    cached: list[np.ndarray | None]  # per row: the kept encoder output, or None
    errors: dict[int, BaseException] = field(default_factory=dict)  # unreadable windows

    def frames(self, k: int) -> int:
        """Mel frames of row ``k`` (the encoder's input length)."""
        feat = self.features[k]
        if feat is not None:
            return int(feat.shape[-1])
        cached = self.cached[k]
        assert cached is not None
        return int(cached.shape[0]) * 2


@dataclass
class Pending:
    """A row after the model's part of a batch: what :meth:`WhisperRunner.finish` needs."""

    decoded: dict[str, Any]  # tokens, scores, temperature
    segments: list[dict]  # segments from the tokens (text and times, no words yet)
    language: tuple[str, float]
    alignment: list[dict] | None  # token alignment, for rows that want word times


def _is_model_error(exc: BaseException) -> bool:
    """An error of the model itself (e.g. out of memory), which must fail the batch."""
    from batching.batcher import default_is_oom

    return default_is_oom(exc)


def best_attempt(
    attempts: Sequence[Attempt], compression_ratio_threshold: float | None
) -> Attempt:
    """faster-whisper's pick once every temperature failed: the most likely attempt,
    preferring those that were not too repetitive."""
    if not attempts:
        raise ValueError("best_attempt needs at least one attempt")
    if compression_ratio_threshold is None:
        below = list(attempts)
    else:
        below = [a for a in attempts if a.compression_ratio <= compression_ratio_threshold]
    return max(below or attempts, key=lambda a: a.avg_logprob)


def resolve_compute_type(device: str, compute_type: str) -> str:
    if compute_type != "default":
        return compute_type
    return "float16" if device == "cuda" else "int8"


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class _AlignedRow:
    """Stands in for ``WhisperModel`` inside ``WhisperModel.add_word_timestamps``.

    faster-whisper's word-timing heuristics carry ``last_speech_timestamp`` from one
    row of a batch to the next, which would let one job's window change another
    job's word times. We align the whole batch in one ``align`` call, then run the
    heuristics one row at a time through this object, which hands back that row's
    precomputed alignment instead of calling the model again.
    """

    def __init__(self, frames_per_second: int, alignment: list[dict]) -> None:
        self.frames_per_second = frames_per_second
        self._alignment = alignment

    def find_alignment(self, *_args: Any, **_kwargs: Any) -> list[list[dict]]:
        return [self._alignment]


class WhisperRunner:
    """Loads one Whisper model and decodes batches of windows on it (blocking calls)."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        compute_type: str = "default",
        cpu_threads: int = 0,
        replicas: int = 1,
        device_index: int = 0,
        encode_batch_size: int = 1,
        trim_short: bool = False,
        encoder_cache_bytes: int = DEFAULT_ENCODER_CACHE_BYTES,
    ) -> None:
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
        self.model_name = str(model)
        self.device = device
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        # CPU only: the model is loaded as this many replicas (CTranslate2's
        # inter_threads, weights shared) of ``cpu_threads`` threads each, and a
        # batch's rows are split across them (see _run_rows); 0: chosen at load
        # by default_cpu_layout. A GPU always has one.
        self.replicas = max(0, replicas)
        self._pool: ThreadPoolExecutor | None = None
        self.device_index = device_index
        # rows per encoder call on a CPU (a GPU encodes a whole group at once)
        self.encode_batch_size = max(1, encode_batch_size)
        self.trim_short = trim_short
        self.encoder_cache = EncoderCache(encoder_cache_bytes)
        self._wm: Any = None  # faster_whisper.WhisperModel once loaded
        self._solo_wm: Any = None  # the same on every CPU thread, for lone windows (see load)
        self._info: ModelInfo | None = None
        self._tokenizers: dict[tuple[str, str], Any] = {}
        self._prompt_tokens: dict[str, list[int]] = {}
        self._suppress: list[int] = []
        self._suppress_trimmed: dict[int, list[int]] = {}

    # -- loading ---------------------------------------------------------------

    def load(self) -> None:
        """Load the model (seconds; call it from a thread, never the event loop)."""
        if self._wm is not None:
            return
        from faster_whisper import WhisperModel
        from faster_whisper.transcribe import get_suppressed_tokens

        device = resolve_device(self.device)
        compute_type = resolve_compute_type(device, self.compute_type)
        if device != "cpu":
            self.replicas = 1
        elif self.replicas == 0:
            self.replicas, self.cpu_threads = default_cpu_layout(cpu_cores(), 0, self.cpu_threads)
        wm = WhisperModel(
            self.model_name,
            device=device,
            device_index=self.device_index,
            compute_type=compute_type,
            cpu_threads=self.cpu_threads,
            num_workers=self.replicas,
        )
        self._wm = wm
        if device == "cpu" and self.replicas > 1:
            self._pool = ThreadPoolExecutor(self.replicas, thread_name_prefix="whisper-replica")
            # A lone window has nothing to share between replicas, and on one
            # thread its 30-s encoder pass is what it waits for: it runs on a
            # second copy of the model with every thread instead (one 11-s clip:
            # 0.84 s on a one-thread replica against 0.62 s for faster-whisper
            # on two threads). Costs the weights once more (46 MB for tiny.en).
            self._solo_wm = WhisperModel(
                self.model_name,
                device=device,
                compute_type=compute_type,
                cpu_threads=self.replicas * max(1, self.cpu_threads),
                num_workers=1,
            )
        model = wm.model
        self._info = ModelInfo(
            name=self.model_name,
            device=model.device,
            compute_type=model.compute_type,
            multilingual=bool(model.is_multilingual),
            n_mels=int(model.n_mels),
        )
        # The suppressed set depends only on token ids, not on language or task.
        self._suppress = list(get_suppressed_tokens(self._tokenizer("en", "transcribe"), [-1]))

    @property
    def loaded(self) -> bool:
        return self._wm is not None

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise RuntimeError("the model is not loaded yet; call load() first")
        return self._info

    def _tokenizer(self, language: str, task: str) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        key = (language, task)
        tok = self._tokenizers.get(key)
        if tok is None:
            multilingual = self._wm.model.is_multilingual
            tok = Tokenizer(self._wm.hf_tokenizer, multilingual, task=task, language=language)
            self._tokenizers[key] = tok
        return tok

    # -- prepare (CPU threads) -------------------------------------------------

    def window_key(self, window: WindowRequest) -> tuple[Any, ...]:
        """What identifies a window's audio: the encoder-cache key (job id first)."""
        a = window.audio
        return (window.job_id, window.index, a.path, a.start_sample, a.num_samples)

    def encoder_frames(self, duration: float, short_media: bool = True) -> int:
        """The encoder's input length for a window of ``duration`` seconds.

        3000 frames (30 s), unless short media is trimmed: then the smallest
        bucket that holds the audio plus a margin of silence.
        """
        if not (self.trim_short and short_media):
            return N_FRAMES
        need = math.ceil(duration * 100) + TRIM_MARGIN_FRAMES
        return next((b for b in TRIM_BUCKETS if need <= b), N_FRAMES)

    def prepare(self, windows: list[WindowRequest]) -> PreparedBatch:
        """Read each window's audio and compute its log-mel features, zero-padded.

        Features are computed on the window's own samples and then zero-padded to
        the encoder's input length (3000 frames, or a shorter bucket for a short
        window when ``trim_short`` is on), as faster-whisper does for the last
        window of a file, so a window decodes the same here as the same audio
        alone would there. Padding the audio with silence before the log-mel
        instead (as openai-whisper does) was measured worse on long media
        (bench/longmedia.py, 4 x 6 min, tiny.en: WER 8.4 % against 7.1 % with
        VAD, 9.8 % against 8.2 % without). A window decoded again after a
        fallback skips all this when its encoder output was kept.
        """
        if self._wm is None:
            raise RuntimeError("the model is not loaded yet; call load() first")
        fe = self._wm.feature_extractor
        out = PreparedBatch(rows=[], features=[], cached=[])
        for i, window in enumerate(windows):
            try:
                kept = (
                    self.encoder_cache.take(self.window_key(window))
                    if window.temperature_index > 0
                    else None
                )
                if kept is not None:
                    out.rows.append(i)
                    out.features.append(None)
                    out.cached.append(kept)
                    continue
                audio = window.audio.read()[:WINDOW_SAMPLES]
                if audio.size == 0:
                    audio = np.zeros(fe.hop_length, dtype=np.float32)
                mel = fe(audio)[:, :-1]  # the extractor adds one frame of padding
                frames = self.encoder_frames(window.duration, window.short_media)
                padded = np.zeros((mel.shape[0], frames), dtype=np.float32)
                padded[:, : min(frames, mel.shape[1])] = mel[:, :frames]
                out.rows.append(i)
                out.features.append(padded)
                out.cached.append(None)
            except Exception as exc:  # one unreadable file fails only its window
                out.errors[i] = exc
        return out

    # -- run (the model thread) ------------------------------------------------

    def run(
        self, windows: list[WindowRequest], prepared: PreparedBatch | None = None
    ) -> list[WindowResult | Fallback | BaseException]:
        """Decode a batch, model work and finishing in this thread (tests, benchmarks)."""
        return self.finish(windows, self.run_model(windows, prepared))

    def run_model(
        self, windows: list[WindowRequest], prepared: PreparedBatch | None = None
    ) -> list[Pending | BaseException]:
        """The model's part of a batch (the model thread): encode, detect, generate,
        align. Model errors raise (the batcher decides: split on OOM or fail the
        batch); a problem with one row comes back as that row's exception. What
        is left, turning tokens and alignments into segments and words, is
        :meth:`finish`, which the batcher runs in another thread so the model
        starts the next batch meanwhile."""
        if prepared is None:
            prepared = self.prepare(windows)
        out: list[Pending | BaseException | None] = [None] * len(windows)
        for i, exc in prepared.errors.items():
            out[i] = exc
        if prepared.rows:
            sub = [windows[i] for i in prepared.rows]
            for i, value in zip(prepared.rows, self._run_rows(sub, prepared)):
                out[i] = value
        return [v if v is not None else RuntimeError("window was not decoded") for v in out]

    def finish(
        self, windows: list[WindowRequest], pending: Sequence[Pending | BaseException]
    ) -> list[WindowResult | Fallback | BaseException]:
        """Segments, word times and the fallback verdict of each row (CPU only)."""
        out: list[WindowResult | Fallback | BaseException] = []
        for window, p in zip(windows, pending):
            if isinstance(p, BaseException):
                out.append(p)
                continue
            try:
                if p.alignment is not None:
                    self._word_times(window, p.segments, p.language[0], p.alignment)
                out.append(self._finish(window, p.decoded, p.segments, p.language))
            except Exception as exc:  # one row's failure fails only that row
                out.append(exc)
        return out

    def _run_rows(
        self, windows: list[WindowRequest], prepared: PreparedBatch
    ) -> list[Pending | BaseException]:
        """Decode readable rows: one encode + generate (+ align) per decoding group.

        Rows are grouped before encoding by what a ``generate`` call must share
        (encoder length, temperature, beam size, prompt layout, word timing), so
        each group's encoder output goes to ``generate`` and ``align`` whole: on
        a GPU it never leaves the device, except for a window whose kept encoder
        output comes from host memory and for a group that mixes languages for
        word timing.
        """
        n = len(windows)
        out: list[Pending | BaseException] = [RuntimeError("window was not decoded") for _ in range(n)]
        groups: dict[tuple[int, float, int, int, bool], list[int]] = {}
        for k, w in enumerate(windows):
            t, beam = self._temperature_and_beam(w)
            # The prompt's layout does not depend on the language: "en" stands in
            # for a language still to be detected.
            sot_at = self._prompt(w, "en").index(self._tokenizer("en", w.options.task).sot)
            key = (prepared.frames(k), t, beam, sot_at, w.options.word_timestamps)
            groups.setdefault(key, []).append(k)
        tasks = [
            (chunk, temperature, beam)
            for (_, temperature, beam, _, _), idx in groups.items()
            for chunk in _split(idx, self.replicas if self._pool is not None else 1)
        ]

        def run(task: tuple[list[int], float, int], wm: Any = self._wm) -> None:
            idx, temperature, beam = task
            results = self._run_group([windows[k] for k in idx], prepared, idx, temperature, beam, wm)
            for k, value in zip(idx, results):
                out[k] = value

        if self._pool is None or len(tasks) == 1:
            for task in tasks:
                run(task, self._solo_wm or self._wm)
            return out
        # Each replica takes a share of the rows. On the 2-core machine a model
        # gains almost nothing from its second thread, so two one-thread
        # replicas decode a batch 1.2-1.5x faster (README, "Measured
        # performance"). All shares finish before a model error is raised, so
        # the batcher never overlaps a retry with a running share.
        futures: list[Future[None]] = [self._pool.submit(run, task) for task in tasks]
        wait(futures)
        for f in futures:
            f.result()
        return out

    def decoder_rows(self, window: WindowRequest) -> int:
        """Rows the window takes in ``generate``: its beams, or its sampled
        candidates when decoded warmer; the batcher counts them against
        ``max_batch_weight``, since they are what fills a GPU's memory."""
        t, beam = self._temperature_and_beam(window)
        return BEST_OF if t > 0 else beam

    def _temperature_and_beam(self, w: WindowRequest) -> tuple[float, int]:
        temps = w.options.temperatures or (0.0,)
        t = float(temps[min(w.temperature_index, len(temps) - 1)])
        return t, (1 if t > 0 else max(1, w.options.beam_size))

    def _encode(self, prepared: PreparedBatch, idx: list[int], model: Any) -> tuple[Any, np.ndarray | None]:
        """The encoder output of rows ``idx`` (one encoder length) for ``generate``,
        and the same on the host when it is there anyway (CPU, or kept rows).

        On a CPU the encoder runs in sub-batches of ``encode_batch_size`` rows,
        the size cheapest per window there (the decoder is what gains from big
        batches); on a GPU in one call, which stays on the device.
        """
        import ctranslate2

        fresh = [k for k in idx if prepared.features[k] is not None]
        on_gpu = model.device == "cuda"
        if on_gpu and len(fresh) == len(idx):
            feats = np.stack([prepared.features[k] for k in idx])  # type: ignore[misc]
            return model.encode(ctranslate2.StorageView.from_array(feats)), None
        host: dict[int, np.ndarray] = {}
        step = len(fresh) if on_gpu else max(1, self.encode_batch_size)
        for s in range(0, len(fresh), step):
            chunk = fresh[s : s + step]
            feats = np.stack([prepared.features[k] for k in chunk])  # type: ignore[misc]
            encoded = np.asarray(
                model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=on_gpu)
            )
            for j, k in enumerate(chunk):
                host[k] = encoded[j]
        for k in idx:
            if k not in host:
                host[k] = prepared.cached[k]  # type: ignore[assignment]
        stacked = np.stack([host[k] for k in idx])
        return ctranslate2.StorageView.from_array(stacked), stacked

    def _run_group(
        self,
        windows: list[WindowRequest],
        prepared: PreparedBatch,
        idx: list[int],
        temperature: float,
        beam_size: int,
        wm: Any,
    ) -> list[Pending | BaseException]:
        """One decoding group on ``wm`` (the model, one of its replicas, or the
        copy for lone windows)."""
        import ctranslate2

        model = wm.model
        n = len(windows)
        encoded, host = self._encode(prepared, idx, model)
        frames = prepared.frames(idx[0])

        def rows_of(sel: list[int]) -> Any:
            """Encoder output of some rows of the group (host slicing; rare on a GPU)."""
            nonlocal host
            if len(sel) == n:
                return encoded
            if host is None:
                host = np.asarray(encoded.to_device(ctranslate2.Device.cpu))
            return ctranslate2.StorageView.from_array(np.ascontiguousarray(host[sel]))

        languages = self._languages(windows, encoded, model)
        prompts = [self._prompt(w, languages[j][0]) for j, w in enumerate(windows)]
        if temperature > 0:
            kwargs: dict[str, Any] = dict(
                beam_size=1,
                num_hypotheses=BEST_OF,
                sampling_topk=0,
                sampling_temperature=temperature,
            )
        else:
            kwargs = dict(beam_size=beam_size, patience=1.0)
        results = model.generate(
            encoded,
            prompts,
            max_length=MAX_LENGTH,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress_for(frames),
            max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
            **kwargs,
        )
        decoded: list[dict[str, Any]] = []
        for res in results:
            tokens = list(res.sequences_ids[0])
            # Recover the average log prob from the length-normalised score,
            # exactly as faster-whisper does (length_penalty = 1).
            avg_logprob = res.scores[0] * len(tokens) / (len(tokens) + 1)
            decoded.append(
                dict(
                    tokens=tokens,
                    avg_logprob=float(avg_logprob),
                    no_speech_prob=float(res.no_speech_prob),
                    temperature=temperature,
                )
            )

        out: list[Pending | BaseException] = [RuntimeError("window was not decoded") for _ in range(n)]
        segments: list[list[dict] | None] = [None] * n
        for j, window in enumerate(windows):
            try:
                segments[j] = self._segments(window, decoded[j], languages[j][0])
            except Exception as exc:
                out[j] = exc
        alignments, errors = self._align(windows, segments, languages, rows_of, frames, wm)
        retries: list[int] = []
        for j, window in enumerate(windows):
            if j in errors:
                out[j] = errors[j]
                continue
            segs = segments[j]
            if segs is None:
                continue
            try:
                if self._judge(window, decoded[j], languages[j][0]) and window.temperature_index + 1 < len(
                    window.options.temperatures
                ):
                    retries.append(j)
            except Exception as exc:
                out[j] = exc
                continue
            out[j] = Pending(decoded[j], segs, languages[j], alignments.get(j))
        if retries and self.encoder_cache.max_bytes > 0:
            # Kept now, while the encoder output is at hand: the retry skips the encoder.
            if host is None:
                host = np.asarray(encoded.to_device(ctranslate2.Device.cpu))
            for j in retries:
                self.encoder_cache.put(self.window_key(windows[j]), host[j])
        return out

    def _suppress_for(self, frames: int) -> list[int]:
        """Tokens ``generate`` must not produce: Whisper's set, and for a trimmed
        encoder input the timestamps past its end. Without those, tiny.en given
        a 10-s clip cut mid-word in a 15-s input wrote timestamps past the input
        and then looped to the token limit (compression ratio 6.6, a fallback at
        every temperature); with them it stopped at the audio's end."""
        if frames >= N_FRAMES:
            return self._suppress
        cached = self._suppress_trimmed.get(frames)
        if cached is None:
            begin = self._tokenizer("en", "transcribe").timestamp_begin  # the same in every language and task
            last = N_FRAMES // 2  # timestamps run 0.00-30.00 s in 20-ms steps
            cached = self._suppress + [begin + i for i in range(frames // 2 + 1, last + 1)]
            self._suppress_trimmed[frames] = cached
        return cached

    def _languages(self, windows: list[WindowRequest], encoded: Any, model: Any) -> list[tuple[str, float]]:
        multilingual = model.is_multilingual
        langs: list[tuple[str, float] | None] = []
        for w in windows:
            lang = w.options.language
            if lang in (None, "", "auto"):
                langs.append(None if multilingual else ("en", 1.0))
            else:
                # An English-only model can only write English, whatever was asked.
                langs.append((lang, 1.0) if multilingual else ("en", 1.0))
        if any(x is None for x in langs):
            # One call for the group: it is a single decoder step per row, cheaper
            # than slicing the encoder output down to the rows that need it.
            detected = model.detect_language(encoded)
            for i, x in enumerate(langs):
                if x is None:
                    token, prob = detected[i][0]
                    langs[i] = (token[2:-2], float(prob))
        return [x for x in langs if x is not None]

    def _prompt(self, window: WindowRequest, language: str) -> list[int]:
        tok = self._tokenizer(language, window.options.task)
        previous: list[int] = []
        text = window.options.initial_prompt
        if text:
            previous = self._prompt_tokens.get(text) or []
            if not previous:
                previous = tok.encode(" " + text.strip())
                self._prompt_tokens[text] = previous
        if window.previous_tokens:
            # With its timestamps, as Whisper's own loop passes it: the plain
            # text alone (measured) makes tiny.en drop timestamps and skip speech.
            previous = (previous + list(window.previous_tokens))[-MAX_PREVIOUS_TOKENS:]
            if len(previous) < MAX_PREVIOUS_TOKENS:
                previous = previous[len(previous) % CONTEXT_BUCKET :]
        return self._wm.get_prompt(tok, previous, without_timestamps=False)

    def _segments(
        self, window: WindowRequest, dec: dict[str, Any] | None, language: str
    ) -> list[dict]:
        if dec is None:
            raise RuntimeError("window was not decoded")
        opts = window.options
        if (
            opts.no_speech_threshold is not None
            and dec["no_speech_prob"] > opts.no_speech_threshold
            and not (
                opts.log_prob_threshold is not None
                and dec["avg_logprob"] > opts.log_prob_threshold
            )
        ):
            return []  # silence: the model is confident nobody speaks here
        tok = self._tokenizer(language, opts.task)
        fps = self._wm.frames_per_second
        split = split_tokens(
            dec["tokens"],
            timestamp_begin=tok.timestamp_begin,
            offset=window.offset,
            duration=window.duration,
            ends_in_speech=window.ends_in_speech,
        )
        dec["covered_until"] = split.covered_until
        kept = []
        for sub in split.segments:
            text = tok.decode(list(sub.tokens))
            if sub.start == sub.end or not text.strip():
                continue
            # add_word_timestamps reads the window start from "seek" (in frames).
            kept.append(
                dict(start=sub.start, end=sub.end, tokens=list(sub.tokens), text=text, seek=window.offset * fps)
            )
        return kept

    def _align(
        self,
        windows: list[WindowRequest],
        segments: list[list[dict] | None],
        languages: list[tuple[str, float]],
        subset: Any,
        frames: int,
        wm: Any,
    ) -> tuple[dict[int, list[dict]], dict[int, BaseException]]:
        """Token-level alignments for the rows that want word times (the model part)."""
        alignments: dict[int, list[dict]] = {}
        errors: dict[int, BaseException] = {}
        groups: dict[tuple[str, str], list[int]] = {}
        for i, w in enumerate(windows):
            if w.options.word_timestamps and segments[i]:
                groups.setdefault((languages[i][0], w.options.task), []).append(i)
        fps = self._wm.frames_per_second
        for (language, task), idx in groups.items():
            tok = self._tokenizer(language, task)
            text_tokens = [
                [t for seg in segments[i] for t in seg["tokens"] if t < tok.eot]  # type: ignore[union-attr]
                for i in idx
            ]
            num_frames = [min(frames, math.ceil(windows[i].duration * fps)) for i in idx]
            try:
                # One align call per (language, task): its start sequence is shared.
                found = wm.find_alignment(tok, text_tokens, subset(idx), num_frames)
            except Exception as exc:  # noqa: BLE001 - fails the group's rows, not the batch
                if _is_model_error(exc):
                    raise
                errors.update({i: exc for i in idx})
                continue
            alignments.update(zip(idx, found))
        return alignments, errors

    def _word_times(self, window: WindowRequest, segs: list[dict], language: str, alignment: list[dict]) -> None:
        """faster-whisper's word-timing heuristics on one row, in place (CPU)."""
        from faster_whisper import WhisperModel

        WhisperModel.add_word_timestamps(
            _AlignedRow(self._wm.frames_per_second, alignment),  # type: ignore[arg-type]
            [segs],
            self._tokenizer(language, window.options.task),
            None,
            0,
            PREPEND_PUNCTUATIONS,
            APPEND_PUNCTUATIONS,
            window.offset,  # speech before this window is unknown
        )

    def _judge(self, window: WindowRequest, dec: dict[str, Any], language: str) -> bool:
        """Whether the row fails Whisper's checks and needs a warmer temperature
        (silence excepted). Stores the compression ratio in ``dec``."""
        from faster_whisper.transcribe import get_compression_ratio

        opts = window.options
        if "compression_ratio" not in dec:
            tok = self._tokenizer(language, opts.task)
            dec["compression_ratio"] = get_compression_ratio(tok.decode(dec["tokens"]).strip())
        needs_fallback = (
            opts.compression_ratio_threshold is not None
            and dec["compression_ratio"] > opts.compression_ratio_threshold
        ) or (
            opts.log_prob_threshold is not None and dec["avg_logprob"] < opts.log_prob_threshold
        )
        silent = (
            opts.no_speech_threshold is not None
            and dec["no_speech_prob"] > opts.no_speech_threshold
            and opts.log_prob_threshold is not None
            and dec["avg_logprob"] < opts.log_prob_threshold
        )
        return needs_fallback and not silent

    def _finish(
        self,
        window: WindowRequest,
        dec: dict[str, Any] | None,
        segs: list[dict],
        language: tuple[str, float],
    ) -> WindowResult | Fallback:
        assert dec is not None
        opts = window.options
        start_bound = window.offset
        end_bound = window.offset + window.duration
        out_segments = []
        for seg in segs:
            end = float(min(max(seg["end"], start_bound), end_bound))
            start = float(min(max(seg["start"], start_bound), end))
            words = None
            if opts.word_timestamps:
                words = tuple(
                    Word(
                        start=round(ws, 3),
                        end=round(max(ws, we), 3),
                        word=wd["word"],
                        probability=float(wd["probability"]),
                    )
                    for wd in seg.get("words", [])
                    for ws, we in [(
                        float(min(max(wd["start"], start), end)),
                        float(min(max(wd["end"], start), end)),
                    )]
                )
            out_segments.append(
                Segment(
                    start=round(start, 3),
                    end=round(end, 3),
                    text=seg["text"],
                    words=words,
                    avg_logprob=dec["avg_logprob"],
                    no_speech_prob=dec["no_speech_prob"],
                    temperature=dec["temperature"],
                )
            )
        covered = dec.get("covered_until")
        result = WindowResult(
            segments=tuple(out_segments),
            language=language[0],
            language_probability=language[1],
            covered_until=None if covered is None or covered >= end_bound else round(float(covered), 3),
            temperature=dec["temperature"],
            tokens=tuple(int(t) for seg in segs for t in seg["tokens"]),
        )
        if not self._judge(window, dec, language[0]):
            return result
        attempt = Attempt(
            result=result,
            temperature=dec["temperature"],
            avg_logprob=dec["avg_logprob"],
            compression_ratio=dec["compression_ratio"],
            no_speech_prob=dec["no_speech_prob"],
        )
        retry = window.temperature_index + 1 < len(opts.temperatures)
        return Fallback(attempt=attempt, retry=retry)
