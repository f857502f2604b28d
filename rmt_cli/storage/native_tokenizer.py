"""A checkpoint's tokenizer read straight from tokenizer.json with the `tokenizers` library, for the native engine.

Why: transformers' AutoTokenizer imports much of transformers to build what is, for the tokenizers rmt trains and
saves, a thin layer over the same `tokenizers.Tokenizer`. `NativeTokenizer` is that layer, with the calls rmt's
inference paths make (encode, a batch call, decode, the vocabulary, the end and padding tokens, the backend for
streamed tokenization and the fingerprint), giving the same ids and text.

Only a folder whose tokenizer transformers would load as that plain layer qualifies (`load` says why another does
not): tokenizer.json with no truncation, padding or missing post-processor (transformers would rewrite them), a
tokenizer_config.json of the plain class with no setting the wrapper does not reproduce, named special tokens
that tokenizer.json already holds as special tokens (transformers would add others to the vocabulary), and no
file of a slow tokenizer or of older special-token formats beside them.
"""

from __future__ import annotations

from pathlib import Path

from ..core.native_llama import matches

# tokenizer_config.json keys and the values (`matches`) that change nothing the wrapper does.
PLAIN_CONFIG = {
    "backend": ("tokenizers",), "tokenizer_class": ("TokenizersBackend", "PreTrainedTokenizerFast"),
    "model_max_length": (int, float),  # only a warning about long inputs
    "is_local": (bool,), "local_files_only": (bool,), "name_or_path": (str,),
    "clean_up_tokenization_spaces": (False,), "split_special_tokens": (False,),
    "padding_side": (str,), "truncation_side": (str,),  # for padding and truncation, which rmt never asks for
    "extra_special_tokens": ({}, []), "additional_special_tokens": ([],),
}
NAMED_TOKENS = ("eos_token", "pad_token", "bos_token", "unk_token")  # the wrapper keeps them by name
# Files with which transformers builds or amends a tokenizer otherwise.
OTHER_FILES = ("tokenizer.model", "vocab.json", "vocab.txt", "merges.txt", "special_tokens_map.json",
               "added_tokens.json")


class NativeTokenizer:
    """A `tokenizers.Tokenizer` with the named special tokens of tokenizer_config.json."""

    def __init__(self, backend, special_tokens: dict[str, str]):
        self.backend_tokenizer = backend  # as transformers names it: TokenStream and the fingerprint read it
        self.eos_token = special_tokens.get("eos_token")
        self.pad_token = special_tokens.get("pad_token")
        self.bos_token = special_tokens.get("bos_token")
        self.unk_token = special_tokens.get("unk_token")
        self.cls_token = self.sep_token = None  # an encoder's; never qualifies

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def cls_token_id(self) -> None:
        return None

    @property
    def sep_token_id(self) -> None:
        return None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text: str | list[str], add_special_tokens: bool = True) -> dict:
        """{"input_ids": ids} for a text, or a list of ids for a list of texts."""
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        return {"input_ids": [e.ids for e in self.backend_tokenizer.encode_batch(text, add_special_tokens=add_special_tokens)]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)


def load(folder: Path, config: dict | None) -> NativeTokenizer | str:
    """The folder's tokenizer (`config`: its tokenizer_config.json, None where there is none), or why the wrapper
    would not reproduce transformers' reading of it. Never raises: a folder that does not qualify, broken or not,
    is transformers' to read and to report on."""
    from tokenizers import Tokenizer

    if not (folder / "tokenizer.json").is_file():
        return "no tokenizer.json"
    others = [name for name in OTHER_FILES if (folder / name).exists()]
    if others:
        return f"{', '.join(others)} beside tokenizer.json"
    settings = _named_tokens(config)
    if isinstance(settings, str):
        return settings
    try:
        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # the tokenizers library raises its own error types for a malformed file
        return f"tokenizer.json is unreadable ({type(e).__name__})"
    if backend.truncation is not None or backend.padding is not None:
        return "tokenizer.json sets truncation or padding"
    if backend.post_processor is None:
        return "tokenizer.json has no post-processor"
    special = {token.content for token in backend.get_added_tokens_decoder().values() if token.special}
    for name, token in settings.items():
        if token not in special:
            return f"tokenizer_config.json: {name} {token!r} is not a special token of tokenizer.json"
    return NativeTokenizer(backend, settings)


def _named_tokens(config: dict | None) -> dict[str, str] | str:
    """The named special tokens of tokenizer_config.json, or why it asks for more than the wrapper does."""
    if config is None:
        return "no tokenizer_config.json"
    if config.get("tokenizer_class") not in PLAIN_CONFIG["tokenizer_class"]:
        return "tokenizer_config.json names no plain fast tokenizer class"
    named = {}
    for key, value in config.items():
        if key in NAMED_TOKENS and (value is None or isinstance(value, str)):
            if value is not None:
                named[key] = value
            continue
        if not matches(value, PLAIN_CONFIG.get(key, ())):
            return f"tokenizer_config.json sets {key}"
    return named
