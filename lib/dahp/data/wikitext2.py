"""WikiText-2 (raw) and GPT-2 small: the ``wikitext2_gpt2`` setting, read from local files only.

The files (under the data directory; nothing is downloaded at run time):

- ``wikitext-2-raw/wiki.train.raw``, ``wiki.valid.raw``, ``wiki.test.raw`` -- WikiText-2 raw, the
  Hugging Face dataset ``Salesforce/wikitext``, configuration ``wikitext-2-raw-v1`` (the files of
  its ``wikitext-2-raw-v1.zip`` archive);
- ``gpt2/config.json``, ``gpt2/model.safetensors``, ``gpt2/tokenizer.json`` -- GPT-2 small, the
  Hugging Face model ``gpt2`` (``openai-community/gpt2``) saved with ``save_pretrained`` (model and
  tokenizer into the same folder).

Preprocessing, as dattri's benchmark does it (``dattri.benchmark.datasets.wikitext2``, after
transformers' ``run_clm_no_trainer``): every line of a file is one text (a line holding only
whitespace is the empty text), each text is tokenized on its own by GPT-2's tokenizer (no special
tokens), and the token ids of every run of 1,000 consecutive texts (the ``datasets.map`` batch) are
concatenated and cut into blocks of :data:`BLOCK_SIZE` = 512 tokens, the remainder of each run
dropped. The real files give dattri's 4,656 training blocks and 481 blocks of ``wiki.valid.raw``.

The split (``x`` are the token-id blocks, int64 of shape ``(N, 512)``; ``y`` the same blocks, the
labels of the next-token loss):

- *train*: every block of ``wiki.train.raw`` (dattri's 4,656 training examples);
- *test queries* (the LDS): every block of ``wiki.valid.raw`` -- dattri's 481 benchmark queries, so
  the LDS is measured on the queries of dattri's benchmark and of the paper;
- *validation queries* (the λ selector): every block of ``wiki.test.raw``, text that neither the
  training set nor the LDS queries contain.

The model is GPT-2 with a language-model head (:class:`GPT2LanguageModel`), built from the local
checkpoint: every model of this setting -- the attributed one and every retrained one -- starts
from the same pretrained weights and is fine-tuned. A seed therefore does not change the initial
weights; it sets the batch order and the dropout masks (GPT-2 keeps dropout 0.1 while fine-tuning).
GPT-2's ``Conv1D`` layers are replaced by ``nn.Linear`` layers holding the transposed weights (the
same function; dattri's GPT-2 LoGra script does the same, since LoGra hooks ``nn.Linear`` layers).

The recipe (dattri's ``experiments/gpt2_wikitext/train.py``, which fine-tuned its benchmark's
models): AdamW, lr 5e-5, batch 8, 3 epochs, weight decay 0, a linear decay to 0 with no warm-up.

Loss: the mean next-token cross-entropy (the loss of ``GPT2LMHeadModel(labels=input_ids)``).
Target: the query's *negative* loss, the mean log-likelihood per predicted token. The package's
targets rise when the model does better (the correct-class margin), and a positive score means
"including the training point raises the target"; with the negated loss a positive score means the
training point lowers the query's loss -- the sign of dattri's LoGra scores for the query's loss.

Book: "Data attribution and the LDS" (the settings).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dahp.core.cache import file_sha256
from dahp.core.paths import data_dir
from dahp.data.split import MissingDataError, SplitData

BLOCK_SIZE = 512  #: tokens per example (dattri's ``create_wikitext2_dataset`` default and its script's value)
TEXTS_PER_GROUP = 1000  #: texts concatenated before cutting blocks (``datasets.map``'s default batch)
RAW_DIR = "wikitext-2-raw"
MODEL_DIR = "gpt2"
RAW_FILES = {"train": "wiki.train.raw", "val": "wiki.test.raw", "test": "wiki.valid.raw"}
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
#: The files the setting needs, relative to the data directory.
REQUIRED_FILES = (
    *(f"{RAW_DIR}/{RAW_FILES[split]}" for split in ("train", "test", "val")),
    *(f"{MODEL_DIR}/{name}" for name in MODEL_FILES),
)

WIKITEXT_SOURCE = (
    "WikiText-2 raw comes from the Hugging Face dataset Salesforce/wikitext, configuration "
    "wikitext-2-raw-v1: put the files wiki.train.raw, wiki.valid.raw and wiki.test.raw of its "
    "wikitext-2-raw-v1.zip archive in data/wikitext-2-raw/ (or write each split's 'text' column there, "
    "one row per line, an empty row as a line holding one space: train -> wiki.train.raw, "
    "validation -> wiki.valid.raw, test -> wiki.test.raw)."
)
GPT2_SOURCE = (
    "GPT-2 small comes from the Hugging Face model 'gpt2' (openai-community/gpt2), saved with "
    "save_pretrained: GPT2LMHeadModel.from_pretrained('gpt2').save_pretrained('data/gpt2') and "
    "AutoTokenizer.from_pretrained('gpt2').save_pretrained('data/gpt2')."
)
DATA_INSTRUCTIONS = f"{WIKITEXT_SOURCE}\n{GPT2_SOURCE}"

#: A WikiText heading line, e.g. `` = Valkyria Chronicles III = `` or `` = = Gameplay = = ``.
_HEADING = re.compile(r"^ (= )+[^=].* (= ?)+$")


# --------------------------------------------------------------------------------------------
# Checks: one message per problem, naming the file, what is wrong and where the data comes from


def _bad(path: Path, problem: str, source: str):

    return MissingDataError(f"{path}: {problem}.\n{source}")


def _check_present(path: Path, source: str) -> None:
    if not path.is_file():
        raise _bad(path, "missing", source)
    if path.stat().st_size == 0:
        raise _bad(path, "empty (0 bytes)", source)


def read_raw_texts(path: Path) -> list[str]:
    """The texts of a WikiText raw file: one per line, a whitespace-only line as the empty text.

    Raises :class:`dahp.data.settings.MissingDataError` when the file is missing, empty, not UTF-8 or
    has no WikiText heading line (`` = Title = ``), i.e. is not a WikiText raw file.
    """
    _check_present(path, WIKITEXT_SOURCE)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _bad(path, f"not UTF-8 text ({error.reason} at byte {error.start})", WIKITEXT_SOURCE) from None
    # lines end at "\n" only (read_text has turned "\r\n" and "\r" into "\n"), as iterating the
    # file does; str.splitlines would also split at the rarer separators the text may contain
    pieces = text.split("\n")
    lines = [piece + "\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    if not any(_HEADING.match(line.rstrip("\n")) for line in lines):
        raise _bad(path, "not a WikiText raw file (no heading line such as ' = Title = ')", WIKITEXT_SOURCE)
    # the texts of the Hugging Face dataset: lines keep their newline, blank lines are empty
    return [line if line.strip() else "" for line in lines]


def _read_config(directory: Path, block_size: int) -> dict:
    path = directory / "config.json"
    _check_present(path, GPT2_SOURCE)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _bad(path, f"not valid JSON ({error})", GPT2_SOURCE) from None
    if not isinstance(config, dict) or config.get("model_type") != "gpt2":
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise _bad(path, f"not a GPT-2 config (model_type={found!r}, expected 'gpt2')", GPT2_SOURCE)
    if config.get("n_positions", 1024) < block_size:
        raise _bad(
            path,
            f"n_positions={config['n_positions']} is shorter than the blocks of {block_size} tokens",
            GPT2_SOURCE,
        )
    if config.get("tie_word_embeddings", True) is False:
        raise _bad(
            path, "tie_word_embeddings is false; GPT-2 ties its output layer to the token embedding", GPT2_SOURCE
        )
    return config


def _check_tokenizer(directory: Path, vocab_size: int) -> None:
    path = directory / "tokenizer.json"
    _check_present(path, GPT2_SOURCE)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        model = spec["model"]
        n_tokens = len(set(model["vocab"].values()) | {t["id"] for t in spec.get("added_tokens", [])})
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise _bad(path, f"not a tokenizers JSON file ({type(error).__name__}: {error})", GPT2_SOURCE) from None
    if model.get("type") != "BPE":
        raise _bad(path, f"not a byte-level BPE tokenizer (model type {model.get('type')!r})", GPT2_SOURCE)
    if n_tokens != vocab_size:
        raise _bad(
            path,
            f"its vocabulary has {n_tokens} tokens but gpt2/config.json says vocab_size={vocab_size} "
            "(tokenizer and model come from different checkpoints)",
            GPT2_SOURCE,
        )


def check_model_files(root: Path, block_size: int = BLOCK_SIZE) -> dict:
    """Check ``root/gpt2`` before use; return its config. Raises ``MissingDataError`` naming the file."""
    directory = root / MODEL_DIR
    config = _read_config(directory, block_size)
    _check_present(directory / "model.safetensors", GPT2_SOURCE)
    _check_tokenizer(directory, int(config.get("vocab_size", 0)))
    return config


# --------------------------------------------------------------------------------------------
# The loader


def load_tokenizer(root: Path):
    """GPT-2's tokenizer from ``root/gpt2`` (checked first; local files only)."""
    from transformers import AutoTokenizer

    check_model_files(root)
    return AutoTokenizer.from_pretrained(str(root / MODEL_DIR), local_files_only=True)


def token_blocks(texts: list[str], tokenizer, block_size: int = BLOCK_SIZE) -> torch.Tensor:
    """Blocks of ``block_size`` token ids, int64 ``(N, block_size)``, grouped as dattri's benchmark does."""
    blocks: list[torch.Tensor] = []
    for start in range(0, len(texts), TEXTS_PER_GROUP):
        group = texts[start : start + TEXTS_PER_GROUP]
        ids = [i for encoded in tokenizer(group, add_special_tokens=False)["input_ids"] for i in encoded]
        usable = len(ids) // block_size * block_size
        if usable:
            blocks.append(torch.tensor(ids[:usable], dtype=torch.int64).view(-1, block_size))
    return torch.cat(blocks) if blocks else torch.empty(0, block_size, dtype=torch.int64)


def load_wikitext2(root: Path, block_size: int = BLOCK_SIZE):
    """The ``wikitext2_gpt2`` split from the files under ``root`` (see the module docstring).

    Every file is checked before any tokenization; a split without a single block stops with the
    file's name.
    """

    texts = {split: read_raw_texts(root / RAW_DIR / name) for split, name in RAW_FILES.items()}
    tokenizer = load_tokenizer(root)
    blocks = {}
    for split, split_texts in texts.items():
        blocks[split] = token_blocks(split_texts, tokenizer, block_size)
        if len(blocks[split]) == 0:
            path = root / RAW_DIR / RAW_FILES[split]
            raise _bad(path, f"too short: not one block of {block_size} tokens", WIKITEXT_SOURCE)
    # labels are the inputs: the loss shifts them by one position
    return SplitData(
        x_train=blocks["train"],
        y_train=blocks["train"],
        x_val=blocks["val"],
        y_val=blocks["val"],
        x_test=blocks["test"],
        y_test=blocks["test"],
    )


# --------------------------------------------------------------------------------------------
# Loss and target


def next_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token ``t + 1`` from tokens ``..t``, per example: ``(batch,)``.

    ``labels`` may come flattened (dattri's loaders reshape labels to one axis); they are laid out
    as the logits' leading axes.
    """
    labels = labels.reshape(logits.shape[:-1]).long()
    predicted, following = logits[..., :-1, :], labels[..., 1:]
    losses = F.cross_entropy(predicted.reshape(-1, logits.shape[-1]), following.reshape(-1), reduction="none")
    return losses.view(following.shape).mean(dim=-1)


def next_token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of each block's next tokens the model ranks first, shape ``(batch,)``."""
    return (logits[:, :-1].argmax(-1) == labels[:, 1:]).float().mean(dim=-1)


def language_model_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The training loss: mean next-token cross-entropy over the batch (every block has the same
    length, so this is the mean over all predicted tokens, as ``GPT2LMHeadModel``'s loss)."""
    return next_token_losses(logits, labels).mean()


def query_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The attribution target: the query's negative loss (mean log-likelihood per token), ``(batch,)``."""
    return -next_token_losses(logits, labels)


# --------------------------------------------------------------------------------------------
# The model


@dataclasses.dataclass
class LanguageModelOutput:
    """What the model returns when it is given labels (the Hugging Face convention)."""

    loss: torch.Tensor
    logits: torch.Tensor


class GPT2LanguageModel(nn.Module):
    """GPT-2 with its language-model head; ``forward(input_ids)`` returns the logits ``(batch, T, vocab)``.

    The head is the token embedding itself (GPT-2 ties them), applied functionally, so every
    parameter has one name and ``torch.func.functional_call`` swaps it everywhere it is used.
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        """Logits of ``input_ids`` (``(..., T)``; leading axes are flattened into the batch).

        Token ids arrive as floats where the package's gradient code casts inputs to the parameters'
        dtype; they are exact integers there (ids < 2**24), so they are read back as integers.
        Given ``labels``, returns a :class:`LanguageModelOutput` with the loss (as Hugging Face models
        do, and as dattri's LoGra reads the loss of dict batches).
        """
        ids = input_ids.reshape(-1, input_ids.shape[-1])
        if ids.is_floating_point():
            ids = ids.round().long()
        hidden = self.transformer(input_ids=ids, use_cache=False).last_hidden_state
        logits = F.linear(hidden, self.transformer.wte.weight)
        if labels is None:
            return logits
        return LanguageModelOutput(loss=language_model_loss(logits, labels), logits=logits)


def _linear_from_conv1d(conv: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` computing what a Hugging Face ``Conv1D`` computes (its weight is stored transposed)."""
    in_features, out_features = conv.weight.shape
    linear = nn.Linear(in_features, out_features, dtype=conv.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    return linear


def _conv1d_as_linear(model: nn.Module) -> None:
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                setattr(parent, name, _linear_from_conv1d(child))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' own progress bars off (they would land in the book's pages), restored after."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _stamp(directory: Path) -> tuple:
    """What identifies the checkpoint's files on disk (a rewritten file loads afresh)."""
    return tuple(
        (name, (directory / name).stat().st_mtime_ns, (directory / name).stat().st_size) for name in MODEL_FILES
    )


@functools.lru_cache(maxsize=2)
def _pretrained(directory: str, stamp: tuple) -> GPT2LanguageModel:
    """The checkpoint in ``directory``, checked and loaded once per version of its files (``stamp``)."""
    from transformers import GPT2LMHeadModel

    path = Path(directory)
    check_model_files(path.parent)
    # forked: loading (and the Linear layers made for Conv1D) draws from the global stream, and
    # whether the checkpoint was already cached must not move the dropout stream a seed sets
    with _quiet(), torch.random.fork_rng():
        try:
            # eager attention: plain tensor arithmetic, the same under torch.func's vmap and grad
            loaded = GPT2LMHeadModel.from_pretrained(directory, local_files_only=True, attn_implementation="eager")
        except Exception as error:  # a corrupt or mismatched weights file surfaces here, whatever its type
            raise _bad(
                path / "model.safetensors", f"cannot be loaded ({type(error).__name__}: {error})", GPT2_SOURCE
            ) from None
        _conv1d_as_linear(loaded.transformer)
    return GPT2LanguageModel(loaded.transformer).eval()


def gpt2_from_checkpoint(root: Path | None = None) -> GPT2LanguageModel:
    """A fresh copy of the pretrained GPT-2 under ``root/gpt2`` (default: the data directory).

    The checkpoint is checked and read once per process and version of its files; each call
    returns an independent deep copy, so fine-tuning one model never touches another.
    """

    root = data_dir() if root is None else root
    directory = root / MODEL_DIR
    try:
        stamp = _stamp(directory)
    except OSError:
        check_model_files(root)  # names the file that is missing
        raise
    return copy.deepcopy(_pretrained(str(directory.resolve()), stamp))


def checkpoint_spec(root: Path) -> dict:
    """What fixes the fine-tuned models besides the data: the pretrained checkpoint's files (for cache keys).

    Every fine-tune starts from these weights, so two different checkpoints must never share a cached model.
    """

    digest = hashlib.sha256()
    for name in MODEL_FILES:
        digest.update(f"{name}\0{file_sha256(root / MODEL_DIR / name)}\n".encode())
    return {"pretrained": digest.hexdigest()[:16]}


def make_gpt2() -> GPT2LanguageModel:
    """The setting's model factory: the pretrained GPT-2 of the data directory."""
    return gpt2_from_checkpoint()


# --------------------------------------------------------------------------------------------
# The fixture


_FIXTURE_TOPICS = (
    "Valkyria Chronicles",
    "Tropical Storm Arlene",
    "Robert Boulter",
    "Kiss You",
    "Ise class battleship",
    "Du Fu",
    "Crown of Aragon",
    "Rhodesian general election",
    "The Feast of the Goat",
    "Tower Building of the Little Rock Arsenal",
    "Ambrose Burnside",
    "Hurricane Gustav",
)
_FIXTURE_WORDS = (
    "the of and in to a was by for on as with at from is his that it were an which their after "
    "game series battle storm album ship war army city river season film song poem station "
    "released first second during later early several large small new old north south east west "
    "1 2 3 10 1914 1936 1941 2008 2011 @-@ @,@ @.@ ( ) \" ' ; : , ."
).split()


def _fixture_text(rng: torch.Generator, n_articles: int, first_topic: int) -> str:
    """Articles in WikiText raw layout: `` = Title = `` headings, `` = = Section = = `` sub-headings,
    paragraphs of space-separated tokens, and a line holding one space between them."""
    lines = [" \n"]
    for article in range(n_articles):
        topic = _FIXTURE_TOPICS[(first_topic + article) % len(_FIXTURE_TOPICS)]
        lines += [f" = {topic} = \n", " \n"]
        for section in range(3):
            if section:
                lines += [f" = = {_FIXTURE_WORDS[section * 7].capitalize()} history = = \n", " \n"]
            for _ in range(3):
                n_words = int(torch.randint(20, 60, (), generator=rng))
                picks = torch.randint(len(_FIXTURE_WORDS), (n_words,), generator=rng).tolist()
                sentence = " ".join(_FIXTURE_WORDS[i] for i in picks)
                lines += [f" {topic} {sentence} . \n", " \n"]
    return "".join(lines)


#: Fixture sizes: articles per file (about 30 lines each) and the tiny model's shape.
FIXTURE_ARTICLES = {"train": 12, "val": 3, "test": 3}
FIXTURE_VOCAB = 400
FIXTURE_SEED = 0


def write_fixture(root: Path) -> None:
    """Tiny files in exactly the real layout under ``root`` (deterministic, about a second).

    WikiText-style raw text in ``root/wikitext-2-raw/wiki.{train,valid,test}.raw``; a byte-level BPE
    tokenizer trained on the training text with ``tokenizers`` and a 2-layer GPT-2 (32-dimensional,
    ``n_positions`` = :data:`BLOCK_SIZE`, random weights from :data:`FIXTURE_SEED`), both saved with
    ``save_pretrained`` in ``root/gpt2``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    rng = torch.Generator().manual_seed(FIXTURE_SEED)
    raw = root / RAW_DIR
    raw.mkdir(parents=True, exist_ok=True)
    texts = {}
    first = 0
    for split in ("train", "val", "test"):
        texts[split] = _fixture_text(rng, FIXTURE_ARTICLES[split], first)
        first += FIXTURE_ARTICLES[split]
        (raw / RAW_FILES[split]).write_text(texts[split], encoding="utf-8")

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=FIXTURE_VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts["train"].splitlines(keepends=True), trainer=trainer)
    spec = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tokenizer = GPT2Tokenizer(vocab=spec["vocab"], merges=merges)
    directory = root / MODEL_DIR
    tokenizer.save_pretrained(str(directory))

    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=BLOCK_SIZE,
        vocab_size=len(tokenizer),
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
    )
    with torch.random.fork_rng(), _quiet():  # the caller's random stream is left as it was
        torch.manual_seed(FIXTURE_SEED)
        GPT2LMHeadModel(config).save_pretrained(str(directory))
