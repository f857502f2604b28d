"""`rmt ingest`: stream documents through a trained RMT and save what it remembers.

Reading, decoding and tokenizing are incremental and segments run without gradients, so memory use is flat
however long the input. Several documents are read side by side and their segments run as one batch; one
document alone runs the same code with a batch of one, which is the bit-exact path (`--append` after a cut
gives exactly the memory of reading everything in one pass).

One document alone, under a gated rule with a gate floor, also reads ahead (`lookahead`): a segment whose every
gate is under the floor leaves the memory exactly as it was, and in a book that is nearly every segment, so the
next segments are run side by side from the same memory, as if none of them wrote. The first that may write is
run again alone, from that memory, as the one-at-a-time path runs it; the segments after it, if it wrote, are run
again from its memory. So the memory is the one-at-a-time path's, bit for bit, and most of a book runs in batches.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..atomic import (check_outside_checkpoints, existing_folder, file_identity, hold_lock, output_target,
                      pipe_identity)
from ..storage.checkpoint import LoadedModel, check_usable, in_eval_mode
from ..errors import (RMTError, UsageError, bool_argument, callback_argument, counted, named_paths, one_line,
                      path_argument, shown, unicode_text, whole_number_argument)
from ..storage.memfile import (DTYPES, MemoryState, check_compatible, check_replaceable, dtype_name, load_memory,
                               memory_fingerprint, save_memory)
from ..core.segments import SegmentStream
from ..data.sources import (Document, editor_lines, home_path, open_document, path_list, read_small_stdin,
                            read_small_text)
from ..data.tokenstream import DocumentTokens

LOOKAHEAD = 32  # segments run side by side at most when reading ahead: past this the batch gains little on a CPU
UNSURE = 0.5  # a gate above this share of the floor may be on either side of it in another batch: run alone


@dataclass
class IngestJob:
    """One document to ingest: `paths` read in order as one text (files, folders read as a codebase, "-" for
    standard input), its memory written to `output`; continuing the memory file `append_from` where given."""

    paths: list[str]
    output: Path
    append_from: Path | None = None
    origin: str | None = None  # where the job was given, for errors: "MANIFEST:LINE"

    def __post_init__(self):  # accept str and os.PathLike as well as Path, and one path as well as a list
        self.paths = path_list(self.paths)
        if isinstance(self.output, str) and not self.output:  # Path("") would be ".", "a folder" (the CLI's -o '')
            raise UsageError("no output given: name the memory file to write")
        path_argument(self.output, "output")
        self.output = Path(self.output)
        self.append_from = None if self.append_from is None else Path(path_argument(self.append_from, "append_from"))

    def files(self) -> list[Path]:
        """Every file the job reads or writes, as real paths: its inputs (but stdin), the memory file it continues,
        its output (realpath, unlike resolve(), never raises on a link loop)."""
        named = [*(p for p in self.paths if p != "-"), *([self.append_from] if self.append_from else []), self.output]
        return [Path(os.path.realpath(p)) for p in named]


@dataclass
class IngestResult:
    output: str
    tokens: int = 0
    segments: int = 0
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0
    warnings: list[str] = field(default_factory=list)
    # What the memory file holds in all: more than this run's tokens and segments after an --append.
    total_tokens: int = 0
    total_segments: int = 0
    skipped: list[str] = field(default_factory=list)  # what a folder held and was not read (every one)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {"output": self.output, "tokens": self.tokens, "segments": self.segments, "bytes": self.bytes,
                "seconds": round(self.seconds, 3), "tokens_per_second": round(self.tokens_per_second, 1),
                "total_tokens": self.total_tokens, "total_segments": self.total_segments,
                "error": self.error, "warnings": self.warnings, "skipped": self.skipped}


class IngestInterrupted(KeyboardInterrupt):
    """Ctrl-C during `ingest`: `results` has one entry per job, as `ingest` returns them. A finished document's
    memory file is written (its result as usual); an unfinished one wrote nothing (its result says so)."""

    def __init__(self, results: list[IngestResult]):
        super().__init__()
        self.results = results


@dataclass
class Progress:
    bytes_read: int
    bytes_total: int | None
    tokens: int
    segments: int
    documents_done: int
    documents_total: int


class _Reader:
    """One document being read: bytes -> text -> final tokens -> segments, plus its memory row."""

    def __init__(self, job: IngestJob, document: Document, model: LoadedModel, force: bool):
        self.job = job
        self.ahead: list[list[int]] = []  # whole segments taken from the stream, not yet run (read ahead)
        self.width = 1  # how many segments the next read-ahead runs side by side
        self.result = IngestResult(str(job.output))
        self.output_before: tuple | None | bool = False  # the output's _file_identity as `save` began it
        self.started = time.perf_counter()
        self.document = document
        self.fingerprint = memory_fingerprint(model.fingerprint_now(), model.cell.dtype)
        # Held until the file is replaced: a second rmt writing it meanwhile (an --append reads it first) would
        # rename its result over this one's, and one of the two would be lost without a word.
        self.lock = hold_lock(job.output, f"{shown(job.output)}: another rmt is writing it (an ingest or --append); "
                                          f"try again when it ends")
        # A new output has no file to lock: a second run writing it meanwhile is found when this one saves.
        self.output_at_start = _file_identity(job.output)
        try:
            self._start(job, model, force)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def _start(self, job: IngestJob, model: LoadedModel, force: bool) -> None:
        if job.append_from is not None:
            state = load_memory(job.append_from)
            check_compatible(state, model, force, str(job.append_from))
            self.memory = state.memory.to(device=model.cell.memory.device, dtype=model.cell.dtype)
            self.document_tokens = DocumentTokens(self.document, model.tokenizer, state.pending_bytes,
                                                  state.carry_text)
            self.segment_stream = SegmentStream(model.segment_size, self.document_tokens.chunks(),
                                                state.tail_tokens)
            self.segments = state.segments
            self.sources = list(state.sources)
            self.sources_omitted = state.sources_omitted
            self.tokens_before, self.segments_before = state.tokens, state.segments
            # A forced append of another model's memory (check_compatible passed with --force): the file keeps the
            # mix detectable, for good.
            self.was_mixed = bool(state.forced_from)
            self.forced_from = state.forced_from or (state.fingerprint if state.fingerprint != self.fingerprint
                                                     else "")
        else:
            self.memory = model.cell.initial_memory(1)[0].detach()
            self.document_tokens = DocumentTokens(self.document, model.tokenizer)
            self.segment_stream = SegmentStream(model.segment_size, self.document_tokens.chunks())
            self.segments, self.sources, self.sources_omitted = 0, [], 0
            self.tokens_before = self.segments_before = 0
            self.forced_from, self.was_mixed = "", False

    def save(self, state: MemoryState) -> None:
        now = _file_identity(self.job.output)
        if now is not None and now != self.output_at_start:
            raise RMTError(f"{shown(self.job.output)}: written by another program while this ingest ran; this "
                           f"document's memory is not written over it (run it again, or write it elsewhere)")
        self.output_before = now
        save_memory(self.job.output, state)

    def saved(self) -> bool:
        """Whether `save` replaced the output: an interrupt may land after the rename, before `save` returns."""
        return self.output_before is not False and _file_identity(self.job.output) != self.output_before

    def has_segment(self) -> bool:
        return bool(self.ahead) or self.segment_stream.fill()

    def take(self) -> list[int]:
        """The next whole segment (after `has_segment` said there is one), the ones read ahead first."""
        return self.ahead.pop(0) if self.ahead else self.segment_stream.take()

    def take_ahead(self, count: int) -> list[list[int]]:
        """Up to `count` whole segments, the ones read ahead first."""
        while len(self.ahead) < count and self.segment_stream.fill():
            self.ahead.append(self.segment_stream.take())
        return self.ahead[:count]

    def state(self, model: LoadedModel) -> MemoryState:
        tail = self.segment_stream.tail
        tokens = self.segments * model.segment_size + len(tail) + len(self.document_tokens.rest())
        # a name's bytes that are not UTF-8 as the text `\udce9`, as --json writes them (valid Unicode, as JSON wants)
        records = [{"name": unicode_text(r.name), "size": r.size, "sha256": r.sha256} for r in self.document.records]
        return MemoryState(
            memory=self.memory, tail_tokens=tail, fingerprint=self.fingerprint, dtype=dtype_name(model.cell.dtype),
            segment_size=model.segment_size, num_mem_tokens=model.memory_settings.num_mem_tokens,
            model_hint=str(model.path), tokens=tokens, segments=self.segments,
            carry_text=self.document_tokens.stream.carry, pending_bytes=self.document_tokens.utf8.pending,
            sources=self.sources + records, sources_omitted=self.sources_omitted,
            associative_shape=model.cell.associative_shape, forced_from=self.forced_from,
        )


def check_job(job: IngestJob) -> Document:
    """Open a job's inputs (every path checked) and make sure writing its output destroys none of them."""
    target = output_target(job.output)
    check_outside_checkpoints(job.output, "")  # the CLI says so before it loads the model
    if job.append_from is not None:  # a typo there stops the plan too, as one in an input does
        load_memory(job.append_from)
    document = open_document(job.paths)
    for item in document.items:
        if not item.streamed and item.path.resolve() == target:
            raise UsageError(f"{shown(job.output)}: is also an input; writing the memory there would destroy it")
    check_replaceable(job.output)
    return document


def check_plan(jobs: list[IngestJob]) -> None:
    """The whole plan before anything is written: no two jobs write one file, and no job writes a file that
    another job reads (a manifest whose line 1 writes what line 2 reads would read a memory file as text)."""
    outputs: dict[str, int] = {}
    # Each output and each folder above it: the first two jobs that write there, so that an input is looked up
    # once, not compared with every output (that was quadratic: 20,000 jobs had not started after 5 minutes).
    writers: dict[str, list[int]] = {}
    files: dict[tuple[int, int], int] = {}  # an existing output's file: two names of one (hard links) are one output
    for n, job in enumerate(jobs, 1):
        target = os.path.realpath(job.output)  # realpath, unlike resolve(), never raises on a link loop
        file = file_identity(target)
        first_writer = outputs.get(target) or files.get(file)
        if first_writer is not None:
            raise UsageError(f"{shown(job.output)}: written by job {first_writer} and job {n}"
                             f"{'' if target in outputs else ' (two names of one file)'}; give each its own output")
        outputs[target] = n
        if file is not None:
            files[file] = n
        while True:
            first = writers.setdefault(target, [])
            if len(first) == 2:  # and so are those of every folder above it
                break
            first.append(n)
            parent = os.path.dirname(target)
            if parent == target:
                break
            target = parent
    streams: dict[object, int] = {}  # stdin and pipes named by path: each read by one job only
    for n, job in enumerate(jobs, 1):
        for p in job.paths:
            # stdin is its pipe, when it is one: `/dev/stdin` in another job names the same
            stream = (pipe_identity(0) or "-") if p == "-" else pipe_identity(p)
            if stream is not None:
                reader = streams.setdefault(stream, n)
                if reader != n:
                    what = "standard input (-)" if p == "-" else f"the pipe {shown(p)}"
                    raise UsageError(f"{what}: read by job {reader} and job {n}; it can be read only once")
            if p == "-":
                continue
            writer = next((w for w in writers.get(os.path.realpath(p), ()) if w != n), None)
            if writer is not None:
                raise UsageError(f"{shown(p)}: read by job {n} and written by job {writer}; an output must not be "
                                 f"another job's input")


@dataclass
class TraceRecord:
    """How one segment changed one document's memory (`rmt ingest --trace`)."""

    document: int  # index of the job
    segment: int  # the document's segment number, from 0 (an --append continues the count)
    end_token: int  # the document's token offset where the segment ends
    change: float  # |new memory - old| / |old memory|: 0 when the segment left the memory untouched
    gate_max: float | None  # gated rules: the most open gate of the segment (before the floor)


class _SegmentStep:
    """The cell's segment step, eager or compiled (`torch.compile`: fewer Python and dispatch costs per segment,
    at a one-off compile of tens of seconds on a CPU, so it pays on long inputs). Compiled results agree with
    eager ones to float rounding, not bit for bit: an --append continues bit-exactly in the mode it began with.
    A compile that fails (no C++ compiler, say) falls back to eager with a warning."""

    def __init__(self, cell, compiled: bool, warn: Callable[[str], None]):
        self.cell, self.warn = cell, warn
        # dynamic: the batch shrinks as documents end, and one compiled graph serves every batch size
        self.step = torch.compile(cell.forward_segment, dynamic=True) if compiled else None

    def __call__(self, memory, ids):
        if self.step is not None:
            try:
                return self.step(memory, ids)
            except Exception as e:  # torch reports a failed compile with its own error types
                self.warn(f"--compile: compiling the segment step failed ({one_line(str(e))[:160]}); "
                          f"running eagerly")
                self.step = None
        return self.cell.forward_segment(memory, ids)


@torch.inference_mode()
@in_eval_mode
def ingest(jobs: list[IngestJob], model: LoadedModel, batch_size: int = 8, force: bool = False,
           on_progress: Callable[[Progress], None] | None = None,
           on_trace: Callable[[TraceRecord], None] | None = None, compile_step: bool = False,
           on_warning: Callable[[str], None] = lambda message: None,
           lookahead: int = LOOKAHEAD) -> list[IngestResult]:
    """Ingest each job's inputs into its memory file. Failures are reported per document, never lost.

    `on_trace`, when given, receives a record per segment of how much it changed the memory. `compile_step` runs
    the segment step through `torch.compile` (see `_SegmentStep`). `lookahead`: at most this many segments of a
    document read alone run side by side (module docstring); 1 runs them one at a time. The memory is the same.
    """
    check_usable(model)
    if isinstance(jobs, (str, bytes, os.PathLike)) or not (isinstance(jobs, IngestJob) or hasattr(jobs, "__iter__")):
        raise UsageError(f"jobs: an IngestJob or a list of them, not {type(jobs).__name__}")
    jobs = [jobs] if isinstance(jobs, IngestJob) else list(jobs)  # one job, or any iterable of jobs
    whole_number_argument(lookahead, "lookahead")  # 1 reads segments one at a time
    bool_argument(force, "force")
    for callback, what in ((on_progress, "on_progress"), (on_trace, "on_trace"), (on_warning, "on_warning")):
        callback_argument(callback, what)
    wrong = [job for job in jobs if not isinstance(job, IngestJob)]
    if wrong:
        raise UsageError(f"jobs: IngestJob(paths, output) each, not {type(wrong[0]).__name__}")
    whole_number_argument(batch_size, "batch_size")  # documents are read at least one at a time
    if model.cell.dtype not in DTYPES.values():  # found now: load_memory and every command would refuse the file
        raise UsageError(f"a memory file holds {', '.join(DTYPES)}; this model is loaded in "
                         f"{dtype_name(model.cell.dtype)} (load it with one of those)")
    if model.memory_settings.num_mem_tokens == 0:  # a file of no memory, which load_memory refuses
        raise UsageError(f"{shown(model.path)} has no memory tokens (memory.num_mem_tokens: 0, a baseline without "
                         f"memory): there is no memory to write; ingest with a model that has memory")
    S = model.segment_size
    cell = model.cell
    segment_step = _SegmentStep(cell, compile_step, on_warning)
    # Reading ahead needs a memory that a segment can leave exactly as it was: gates with a floor, and no
    # associative matrices (written by every segment).
    floor = cell.gate_floor if cell.gate is not None and cell.associative is None and cell.gate_floor > 0 else None
    results: dict[int, IngestResult] = {}
    queue = list(enumerate(jobs))
    active: dict[int, _Reader] = {}
    total_tokens = total_segments = 0
    finished_bytes = 0
    bytes_total: int | None = None

    def fail(index: int, error: RMTError, reader: _Reader | None = None) -> None:
        res = reader.result if reader else IngestResult(str(jobs[index].output))
        res.error, res.exit_code = str(error), error.exit_code
        results[index] = res

    def fail_reading(index: int, reader: _Reader, error: Exception) -> None:
        """The document fails (e.g. a file that vanished or became unreadable mid-read), not the batch."""
        fail(index, error if isinstance(error, RMTError) else
             RMTError(f"{reader.job.output}: reading input: {error}"), reader)
        del active[index]
        reader.release()

    finishing: tuple[int, _Reader] | None = None  # the document whose memory file is being written
    check_plan(jobs)
    # Check every input and output before reading any: the plan is checked whole, and a typo in the last path
    # stops the batch now, with nothing read or written, not after the first books.
    documents: dict[int, Document] = {}
    for index, job in enumerate(jobs):
        try:
            documents[index] = check_job(job)
        except RMTError as e:  # one line: a path may hold a newline
            raise type(e)(one_line(f"{job.origin}: {e}" if job.origin else str(e))) from None
    try:
        while queue or active:
            while queue and len(active) < batch_size:
                index, job = queue.pop(0)
                try:
                    active[index] = _Reader(job, documents.pop(index), model, force)
                except RMTError as e:
                    fail(index, e)
            ready = []
            for index, reader in list(active.items()):
                try:
                    whole = reader.has_segment()
                except (RMTError, OSError) as e:
                    fail_reading(index, reader, e)
                    continue
                if whole:
                    ready.append(index)
                else:
                    del active[index]
                    finished_bytes += reader.document_tokens.bytes_read
                    finishing = index, reader
                    try:
                        _finish(reader, model)
                    except RMTError as e:  # e.g. a full disk: this document fails, not the batch
                        fail(index, e, reader)
                        continue
                    finally:
                        reader.release()
                    results[index] = reader.result
                    total_tokens += reader.result.total_tokens - reader.segments * S  # its last, partial segment
            if ready and len(ready) == 1 and floor is not None and lookahead > 1:
                index, reader = ready[0], active[ready[0]]
                try:
                    done = _read_ahead(reader, segment_step, floor, lookahead, index, S, on_trace)
                except (RMTError, OSError) as e:
                    fail_reading(index, reader, e)
                    done = 0
                total_tokens += S * done
                total_segments += done
            elif ready:
                readers = [active[i] for i in ready]
                ids = torch.tensor([r.take() for r in readers], dtype=torch.long, device=cell.memory.device)
                memory = torch.stack([r.memory for r in readers])
                new_memory, _, gate = segment_step(memory, ids)
                if on_trace is not None:
                    change = _relative_change(new_memory, memory)
                    for k, (i, r) in enumerate(zip(ready, readers)):
                        on_trace(TraceRecord(i, r.segments, (r.segments + 1) * S, float(change[k]),
                                             None if gate is None else float(gate[k].max())))
                for r, row in zip(readers, new_memory):
                    r.memory = row
                    r.segments += 1
                total_tokens += S * len(readers)
                total_segments += len(readers)
            if on_progress is not None:
                if not queue and bytes_total is None:
                    # Every document is open now: their sizes give the bar an end (unknown for stdin).
                    sizes = [r.document.total_bytes for r in active.values()]
                    if all(size is not None for size in sizes):
                        bytes_total = finished_bytes + sum(sizes)
                on_progress(Progress(finished_bytes + sum(r.document_tokens.bytes_read for r in active.values()),
                                     bytes_total, total_tokens, total_segments, len(results), len(jobs)))
    except KeyboardInterrupt:  # what finished is written and reported; the rest wrote nothing
        if finishing is not None and finishing[0] not in results and finishing[1].saved():
            results[finishing[0]] = finishing[1].result  # interrupted after its file was renamed into place
        unfinished = "interrupted before its end; nothing written"
        raise IngestInterrupted([results.get(i) or IngestResult(str(job.output), error=f"{shown(job.output)}: "
                                                                f"{unfinished}", exit_code=130)
                                 for i, job in enumerate(jobs)]) from None
    finally:
        for reader in active.values():
            reader.release()
    return [results[i] for i in range(len(jobs))]


def _read_ahead(reader: _Reader, segment_step, floor: float, lookahead: int, index: int, S: int,
                on_trace: Callable[[TraceRecord], None] | None) -> int:
    """Run the document's next segments side by side from its memory, keep those that left it untouched, and run
    the first that may write again alone (see the module docstring). Returns how many segments were run for good.
    The width doubles after a read-ahead that nothing interrupted, and starts again at 1 after a write."""
    segments = reader.take_ahead(reader.width)
    ids = torch.tensor(segments, dtype=torch.long, device=reader.memory.device)
    memory = reader.memory.unsqueeze(0)
    new_memory, _, gate = segment_step(memory.expand(len(segments), *reader.memory.shape), ids)
    opened = gate.float().max(-1).values.tolist()
    done, wrote = 0, False
    for k, most_open in enumerate(opened):
        change, gate_max = 0.0, most_open
        # Under UNSURE x floor every gate is shut in any batch: the memory is left as it was, bit for bit. Else (a
        # NaN gate too, which shuts nothing) the segment may write, and its memory is the one-at-a-time path's (a
        # batch of one is already that path).
        if not most_open < UNSURE * floor:
            new_row = new_memory[0]
            if len(segments) > 1:
                alone, _, alone_gate = segment_step(memory, ids[k:k + 1])
                new_row, gate_max = alone[0], float(alone_gate.float().max())
            if not torch.equal(new_row, reader.memory):
                change = float(_relative_change(new_row, reader.memory))
                reader.memory, wrote = new_row, True
        if on_trace is not None:
            on_trace(TraceRecord(index, reader.segments, (reader.segments + 1) * S, change, gate_max))
        reader.segments += 1
        done += 1
        if wrote:  # the segments after it ran from the old memory
            break
    del reader.ahead[:done]
    reader.width = 1 if wrote else min(2 * reader.width, lookahead)
    return done


def _relative_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """|new - old| / |old| of each memory ([..., m, hidden]): the trace's measure of what a segment changed."""
    return (new - old).float().norm(dim=(-2, -1)) / old.float().norm(dim=(-2, -1)).clamp(min=1e-12)


def _file_identity(path: Path) -> tuple | None:
    """What changes when a file is replaced (a rename brings another inode), or None where there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size


def _finish(reader: _Reader, model: LoadedModel) -> None:
    """The document's result, then its memory file: written last, so that the result is whole once it is."""
    state = reader.state(model)
    res = reader.result
    res.total_tokens, res.total_segments = state.tokens, state.segments
    res.tokens, res.segments = state.tokens - reader.tokens_before, state.segments - reader.segments_before
    res.bytes = sum(record.size for record in reader.document.records)  # the inputs' own, not a folder's headers
    res.seconds = time.perf_counter() - reader.started
    if reader.document_tokens.utf8.replaced:
        replaced = reader.document_tokens.utf8.replaced
        where = list(reader.document_tokens.replaced_in) or reader.job.paths
        res.warnings.append(f"{replaced} invalid UTF-8 byte sequences in {named_paths(where)} were read as U+FFFD")
    with_nul = [r for r in reader.document.records if r.nul_bytes]
    if with_nul:  # the head was text (binary files are refused by theirs): said, as invalid UTF-8 is
        res.warnings.append(f"{counted(sum(r.nul_bytes for r in with_nul), 'NUL byte')} in "
                            f"{named_paths([r.name for r in with_nul])}, read as text after a text beginning: is it "
                            f"binary data?")
    if state.pending_bytes:  # `printf 'abc\xe2\x82'` (a cut download, say): bytes no answer sees, unless appended to
        res.warnings.append(f"the input ends inside a UTF-8 character ({counted(len(state.pending_bytes), 'byte')} "
                            f"kept for an --append to finish)" + (" and holds no other text: the memory file holds "
                                                                  "the initial memory" if state.tokens == 0 else ""))
    elif state.tokens == 0:
        res.warnings.append("the input is empty: the memory file holds the initial memory (a valid, empty memory)")
    if reader.document.skipped:
        res.skipped = sorted(reader.document.skipped)
        res.warnings.append(f"{len(res.skipped)} hidden, ignored, binary or unreadable files or folders (links, "
                            f"FIFOs) skipped: {named_paths(res.skipped)}")
    for record in reader.document.records:  # e.g. a log still being written, or a file cut short meanwhile
        if record.changed_while_read:
            res.warnings.append(f"{shown(record.name)} changed while it was read: {record.size:,} bytes read, "
                                f"{record.size_when_opened:,} when it was opened")
    if reader.forced_from and not reader.was_mixed:
        res.warnings.append(f"continued with --force a memory of another model (fingerprint {reader.forced_from}); "
                            f"the file records the mix (forced_from), so every later use needs --force")
    reader.save(state)


def shard_jobs(jobs: list[IngestJob], rank: int, world: int) -> list[int]:
    """Which jobs process `rank` of `world` ingests: every world-th, so each process gets a share of long and
    short documents alike. Each job is one document and one memory file, so the shards never share a file."""
    return list(range(rank, len(jobs), world))


def plan_jobs(paths: list[str], output: str | os.PathLike | None = None, append: str | os.PathLike | None = None,
              manifest: str | os.PathLike | None = None) -> list[IngestJob]:
    """The documents of one `rmt ingest` call and where each memory goes:
    - a manifest: its `input<TAB>output` lines, and nothing else given;
    - `append`: the paths continue that memory file, written back to it unless `output` names another file;
    - `output` a folder (existing, or a name ending in /): one memory file per input, FOLDER/STEM.st;
    - else all paths are one document written to `output`.
    """
    paths = path_list(paths)
    if manifest is not None:
        if paths or output or append:
            raise UsageError("--manifest takes no paths, -o or --append: each line names input and output")
        return manifest_jobs(manifest)
    if append is not None:
        if not paths:
            raise UsageError("--append needs more input to read: rmt ingest --append mem.st MORE...")
        if output is not None and not str(output):
            raise UsageError("no output given: -o '' names no file; leave -o out to write back to --append")
        target = Path(output if output else append)
        if output and str(output).endswith(("/", os.sep)):  # as a file, "newdir/" would be written as "newdir"
            raise UsageError(f"-o {shown(output)}: --append writes one memory file; name a file, not a folder")
        if os.path.isdir(target):  # False for a name the system refuses (too long): output_target names why
            raise UsageError(f"{'-o' if output else '--append'} {shown(target)}: is a folder; --append writes one "
                             f"memory file")
        existing_folder(target, "-o " if output else "--append ")
        return [IngestJob(paths, target, Path(append))]
    if not paths:
        raise UsageError("no input given: name files, folders, or - for standard input")
    if output is None or not str(output):
        raise UsageError("no output given: -o MEMORY_FILE (or -o FOLDER/ for one file per input)")
    if str(output) == "-":  # a file named "-" is never what was meant
        raise UsageError("-o -: a memory file is binary and goes to a file, not to standard output; name a file")
    folder = Path(output)
    # The folder a memory file goes in exists; `-o FOLDER/` may make FOLDER itself, in a folder that exists (a
    # manifest's outputs may go into new folders: a pipeline lays its outputs out there).
    existing_folder(folder, "-o ")
    if not (os.path.isdir(folder) or str(output).endswith(("/", os.sep))):
        return [IngestJob(paths, folder)]
    if "-" in paths:
        raise UsageError("stdin (-) has no name for its file in FOLDER/; give it its own -o file")
    stems = [Path(_given_name(p)).stem for p in paths]
    for index, stem in enumerate(stems):
        if stem in stems[:index]:  # with a glob of hundreds, which two
            first = paths[stems.index(stem)]
            output = folder / f"{stem}.st"
            raise UsageError(f"{shown(first)} and {shown(paths[index])} would both write {shown(output)}; use "
                             f"--manifest to name each output")
    return [IngestJob([p], folder / f"{stem}.st") for p, stem in zip(paths, stems)]


def _given_name(path: str) -> str:
    """The name an input goes by in FOLDER/NAME.st: its last part as given ("dir/" is "dir"), or for "." and ".."
    the folder's own name (".." made a hidden "...st")."""
    name = Path(path.rstrip("/") or "/").name
    if name in ("", ".", ".."):
        name = Path(os.path.realpath(path)).name
    return name or "input"


def manifest_jobs(path: str | Path) -> list[IngestJob]:
    """`input<TAB>output` lines (LF or CRLF); blank lines and lines starting with # are skipped. Relative paths
    are read from the current folder, as on the command line, not from the manifest's."""
    path = Path(path)
    if str(path) == "-":  # `… | rmt ingest --manifest -`
        manifest_file = file_identity(0)
        try:
            text = read_small_stdin("manifest <stdin>").decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"manifest <stdin>: not UTF-8 text ({e.reason} at byte {e.start})") from None
    else:
        manifest_file = file_identity(path)
        text = read_small_text(path, "manifest")
    read_from_stdin = manifest_file is not None and manifest_file == file_identity(0)
    jobs = []
    for n, line in enumerate(editor_lines(text), 1):  # a BOM names no file
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise UsageError(f"manifest {shown(path)}:{n}: expected input<TAB>output, got {shown(line, 60)}")
        if "\0" in line:  # no file name can hold one; the OS would refuse it with a ValueError
            raise UsageError(f"manifest {shown(path)}:{n}: a name holds a NUL character: {shown(line, 60)}")
        for part, role in zip(parts, ("input", "output")):
            if part != part.strip():  # stripped, ` sp.txt` would name another file, read without a word
                raise UsageError(f"manifest {shown(path)}:{n}: the {role} {shown(repr(part), 60)} begins or ends with "
                                 f"white space; names are taken as written: remove it (or rename the file)")
        if parts[1].endswith(("/", os.sep)):
            raise UsageError(f"manifest {shown(path)}:{n}: the output {shown(parts[1], 60)} names a folder; a "
                             f"line names one memory file")
        if (parts[0] == "-" and read_from_stdin) or (manifest_file is not None and
                                                     file_identity(home_path(parts[0])) == manifest_file):
            what = "standard input (-)" if parts[0] == "-" else shown(parts[0], 60)
            raise UsageError(f"manifest {shown(path)}:{n}: reads {what}, which holds the manifest itself")
        jobs.append(IngestJob([parts[0]], Path(home_path(parts[1])), origin=f"manifest {shown(path)}:{n}"))
    if not jobs:
        raise UsageError(f"manifest {shown(path)}: no jobs in it")
    return jobs
