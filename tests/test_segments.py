"""Cutting documents into segments, and the final segment shared by training, evaluation and asking."""

import pytest

from rmt_cli.commands.samples import TaskData
from rmt_cli.core.memory import IGNORE_INDEX
from rmt_cli.storage.recipe import MemorySpec, TaskSpec
from rmt_cli.core.segments import (ANSWER_ROOM, DocumentSample, SegmentStream, answer_ids, build_final_segment, collate,
                              qa_sample, question_ids, split_document)
from rmt_cli.data.tasks import PEOPLE, NoiseSource, build_haystack, memorize_story, qa1_story, rng_for

S = 40  # segment size used with the real tokenizer (the question prompt takes ~25 tokens)


# --- split_document --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 16, 23, 24, 25])
def test_split_document_whole_segments_and_tail(length):
    doc = list(range(100, 100 + length))
    segments, tail = split_document(doc, 8)
    assert all(len(s) == 8 for s in segments)
    assert len(segments) == length // 8
    assert len(tail) == length % 8
    assert [t for s in segments for t in s] + tail == doc


@pytest.mark.parametrize("chunk", [1, 3, 8, 13, 100])
def test_segment_stream_cuts_chunks_as_split_document_cuts_the_whole(chunk):
    doc = list(range(100, 150))
    for carried in (0, 5):  # a tail left by an earlier pass is read first
        stream = SegmentStream(8, (doc[i : i + chunk] for i in range(carried, len(doc), chunk)), doc[:carried])
        assert (list(stream), stream.tail) == split_document(doc, 8)


def test_segment_stream_reads_chunks_only_as_far_as_a_segment_needs():
    read = []

    def chunks():
        for i in range(10):
            read.append(i)
            yield [i] * 3

    stream = SegmentStream(4, chunks())
    assert stream.fill() and read == [0, 1]
    assert stream.take() == [0, 0, 0, 1] and stream.tail == [1, 1]
    assert stream.take(1) == [1] and stream.tail == [1]  # a shorter piece, as perplexity's token limit takes


# --- build_final_segment ---------------------------------------------------------------------------------------

Q = [900 + i for i in range(10)]  # a 10-token question
A = [800, 801, 802]  # a 3-token answer (shorter than ANSWER_ROOM)


def test_final_segment_without_flush_holds_tail_question_answer():
    size = 32
    tail = list(range(size - len(Q) - ANSWER_ROOM))  # exactly fills the segment with the answer room
    final = build_final_segment(tail, Q, A, size)
    assert final.flush is None
    assert final.input_ids == tail + Q + A
    assert final.labels == [IGNORE_INDEX] * (len(tail) + len(Q)) + A


def test_final_segment_flushes_when_tail_question_and_answer_room_do_not_fit():
    size = 32
    tail = list(range(size - len(Q) - ANSWER_ROOM + 1))  # one token too many
    final = build_final_segment(tail, Q, A, size)
    assert final.flush == tail
    assert final.input_ids == Q + A
    assert final.labels == [IGNORE_INDEX] * len(Q) + A


def test_flushed_tail_is_not_copied_by_reference():
    tail = list(range(30))
    final = build_final_segment(tail, Q, A, 32)
    tail.append(-1)
    assert final.flush == list(range(30))


@pytest.mark.parametrize("answer", [[], A, list(range(700, 700 + ANSWER_ROOM))])
def test_final_segment_never_exceeds_a_segment(answer):
    size = 32
    for n in range(size):
        final = build_final_segment(list(range(n)), Q, answer, size)
        assert len(final.input_ids) <= size
        assert (final.flush is None) == (n + len(Q) + ANSWER_ROOM <= size)


def test_long_answers_still_fit_the_segment():
    size = 32
    longest = list(range(700, 700 + ANSWER_ROOM))
    for n in range(size):  # every tail length: the longest allowed answer always fits the segment
        final = build_final_segment(list(range(n)), Q, longest, size)
        assert len(final.input_ids) <= size
        assert final.input_ids[-ANSWER_ROOM:] == longest
        with pytest.raises(ValueError, match="answer room"):  # one token more is refused, never cut
            build_final_segment(list(range(n)), Q, longest + [799], size)


def test_labels_only_on_answer_tokens():
    final = build_final_segment(list(range(5)), Q, A, 32)
    scored = [(i, t) for i, t in enumerate(final.labels) if t != IGNORE_INDEX]
    assert [t for _, t in scored] == A
    assert [i for i, _ in scored] == list(range(len(final.input_ids) - len(A), len(final.input_ids)))
    assert [final.input_ids[i] for i, _ in scored] == A  # labels are the tokens themselves (shifted in the loss)


def test_asking_has_no_labels():
    final = build_final_segment(list(range(5)), Q, [], 32)
    assert final.input_ids == list(range(5)) + Q
    assert all(t == IGNORE_INDEX for t in final.labels)


def test_question_too_long_is_an_error():
    size = 32
    build_final_segment([], list(range(size - ANSWER_ROOM)), [], size)  # just fits
    with pytest.raises(ValueError, match="question takes"):
        build_final_segment([], list(range(size - ANSWER_ROOM + 1)), [], size)
    with pytest.raises(ValueError):
        build_final_segment([], list(range(20)), list(range(13)), size)  # question + long answer


# --- qa_sample and collate -------------------------------------------------------------------------------------


def test_qa_sample_writes_cover_the_document():
    for length in range(0, 60, 3):
        doc = list(range(1000, 1000 + length))
        sample = qa_sample(doc, Q, A, 16 + len(Q))
        whole, tail = split_document(doc, 16 + len(Q))
        assert sample.writes[: len(whole)] == whole
        written = [t for w in sample.writes for t in w]
        in_final = sample.final_ids[: len(sample.final_ids) - len(Q) - len(A)]
        assert written + in_final == doc
        assert sample.final_ids[-len(Q) - len(A):] == Q + A


def test_collate_pads_writes_left_and_finals_right():
    samples = [DocumentSample([[1, 2, 3], [4, 5]], [6, 7, 8], [IGNORE_INDEX, 7, 8]),
               DocumentSample([[9]], [10], [IGNORE_INDEX])]
    batch = collate(samples, pad_id=0)
    # Right-aligned steps: the one-write document writes at the last step, with the other's last segment.
    assert [s.input_ids.tolist() for s in batch.steps] == [[[1, 2, 3], [0, 0, 0]], [[4, 5], [0, 9]]]
    assert [s.attention_mask.tolist() for s in batch.steps] == [[[1, 1, 1], [0, 0, 0]], [[1, 1], [0, 1]]]
    assert [s.active.tolist() for s in batch.steps] == [[True, False], [True, True]]
    assert all(s.labels is None for s in batch.steps)
    assert batch.final_ids.tolist() == [[6, 7, 8], [10, 0, 0]]
    assert batch.final_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.final_labels.tolist() == [[IGNORE_INDEX, 7, 8], [IGNORE_INDEX] * 3]
    assert batch.writes_per_row.tolist() == [2, 1]
    assert batch.num_tokens == 3 + 1 + 2 + 3 + 1


# --- training and asking build the same final segment ----------------------------------------------------------


def ask_path(doc, question, segment_size):
    """What `rmt ask` does: stream whole segments (and a flushed tail), then the final segment with no answer."""
    segments, tail = split_document(doc, segment_size)
    final = build_final_segment(tail, question, [], segment_size)
    return segments + ([final.flush] if final.flush else []), final.input_ids


def assert_training_matches_asking(sample, doc, question, answer, segment_size):
    writes, asked = ask_path(doc, question, segment_size)
    assert sample.writes == writes
    assert sample.final_ids == asked + answer
    assert sample.final_labels == [IGNORE_INDEX] * len(asked) + answer


def test_training_and_asking_agree_for_every_tail_length(tokenizer):
    noise = NoiseSource(tokenizer)
    seen_flush = seen_plain = False
    for i in range(2 * S):
        rng = rng_for(5, i)
        story = qa1_story(rng)
        doc = build_haystack(story, noise, 2 * S + i, rng, "start")
        q, a = question_ids(tokenizer, story.question), answer_ids(tokenizer, story.answer)
        sample = qa_sample(doc, q, a, S)
        assert_training_matches_asking(sample, doc, q, a, S)
        flushed = len(sample.writes) > len(doc) // S
        seen_flush, seen_plain = seen_flush or flushed, seen_plain or not flushed
    assert seen_flush and seen_plain  # both branches were exercised


def _question_of(tokenizer, final_ids, answer_len):
    before_answer = final_ids[: len(final_ids) - answer_len]
    for person in PEOPLE:
        q = question_ids(tokenizer, f"Where is {person}?")
        if before_answer[-len(q):] == q:
            return q
    raise AssertionError("no memorize question found at the end of the final segment")


def test_task_data_samples_match_the_ask_path(tokenizer):
    """TaskData.sample (what training feeds) against build_final_segment with an empty answer (what ask feeds)."""
    data = TaskData(TaskSpec(name="memorize"), MemorySpec(segment_size=S), seed=3).bind(tokenizer)
    for n in (1, 2, 3):
        for index in range(25):
            sample = data.sample(index, n)
            a = [t for t in sample.final_labels if t != IGNORE_INDEX]
            assert a[-1] == tokenizer.eos_token_id
            q = _question_of(tokenizer, sample.final_ids, len(a))
            tail = sample.final_ids[: len(sample.final_ids) - len(q) - len(a)]
            doc = [t for w in sample.writes for t in w] + tail
            assert_training_matches_asking(sample, doc, q, a, S)


def test_answer_ids_end_with_the_end_token(tokenizer):
    a = answer_ids(tokenizer, "  kitchen ")
    assert a[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(a[:-1]) == " kitchen"
    assert question_ids(tokenizer, "Where   is\nMary?") == question_ids(tokenizer, "Where is Mary?")


def test_an_answer_longer_than_the_answer_room_is_rejected_not_flushed_differently():
    """Training and asking must take the same flush decision, so an answer never gets more than ANSWER_ROOM."""
    size = 40
    question = list(range(900, 920))
    answer = list(range(800, 800 + ANSWER_ROOM + 2))
    doc = list(range(100, 100 + size + size - len(question) - ANSWER_ROOM))
    with pytest.raises(ValueError, match="answer room"):
        qa_sample(doc, question, answer, size)


def test_memorize_story_answer_tokens_can_exceed_the_answer_room_with_a_small_vocab():
    """A small vocabulary can make answers long: the case the answer-room check exists for."""
    from rmt_cli.storage.modeling import train_bpe

    tok = train_bpe([memorize_story(rng_for(0, i)).facts[0] for i in range(20)], 64)
    assert len(answer_ids(tok, "bathroom")) > ANSWER_ROOM
