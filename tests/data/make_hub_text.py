"""Stock keras_hub, no distft: tiny Keras Hub text models saved with their preprocessors, with
random weights, and text data they know nothing of.

- gemma.keras: a GemmaCausalLM (a SentencePiece word vocabulary trained here); gemma_ids.keras,
  the same without a preprocessor; gemma_other.keras, one of a vocabulary of two more words. Data of one pattern, each word followed by the next of a
  cycle of WORDS: train.jsonl (RECORDS texts of 2 to 12 words), pairs.jsonl (the same texts as
  a one-word prompt and its response), held.jsonl and held.txt (other texts).
- bert.keras: a BertTextClassifier (a WordPiece vocabulary of WORDS; logits, as Keras Hub's
  classifiers are) and reviews.csv, a text column and a label column: 1 when the text holds
  "seven".

    python make_hub_text.py FOLDER [RECORDS] [SEED]
"""
import io
import json
import os
import sys

import keras
import keras_hub
import numpy as np
import sentencepiece as spm

WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
LENGTH = 16  # the preprocessor's sequence length


def texts(rng: np.random.Generator, n: int) -> list:
    starts, lengths = rng.integers(0, len(WORDS), n), rng.integers(2, 13, n)
    return [" ".join(WORDS[(s + i) % len(WORDS)] for i in range(k)) for s, k in zip(starts, lengths)]


def gemma(words: list) -> tuple:
    """(a tiny GemmaBackbone, its GemmaCausalLMPreprocessor) for a word vocabulary of `words`."""
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(words)] * 4), model_writer=proto, vocab_size=len(words) + 4,
        model_type="word", pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="<pad>",
        unk_piece="<unk>", bos_piece="<bos>", eos_piece="<eos>", minloglevel=2)
    tokenizer = keras_hub.models.GemmaTokenizer(proto=proto.getvalue())
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=32, intermediate_dim=64, head_dim=16)
    return backbone, keras_hub.models.GemmaCausalLMPreprocessor(tokenizer, sequence_length=LENGTH)


def main(folder: str, records: int = 128, seed: int = 0) -> None:
    os.makedirs(folder, exist_ok=True)
    keras.utils.set_random_seed(seed)
    backbone, preprocessor = gemma(WORDS)
    keras_hub.models.GemmaCausalLM(backbone, preprocessor).save(os.path.join(folder, "gemma.keras"))
    keras_hub.models.GemmaCausalLM(backbone, None).save(os.path.join(folder, "gemma_ids.keras"))
    keras_hub.models.GemmaCausalLM(*gemma(WORDS + ["twenty", "thirty"])).save(os.path.join(folder, "gemma_other.keras"))
    rng = np.random.default_rng(seed)
    train, held = texts(rng, records), texts(rng, 32)
    with open(os.path.join(folder, "held.txt"), "w") as f:
        f.writelines(t + "\n\n" for t in held)  # empty lines are skipped
    for name, rows in (("train", [{"text": t} for t in train]), ("held", [{"text": t} for t in held]),
                       ("pairs", [{"prompt": " ".join(t.split()[:1]), "response": " ".join(t.split()[1:])}
                                  for t in train])):
        with open(os.path.join(folder, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    classifier(folder, rng, records, seed)
    assert not any(m.startswith("distft") for m in sys.modules)


def classifier(folder: str, rng: np.random.Generator, records: int, seed: int) -> None:
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=LENGTH)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=LENGTH)
    keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=preprocessor).save(
        os.path.join(folder, "bert.keras"))
    rows = [" ".join(rng.choice(WORDS, rng.integers(2, 8))) for _ in range(records)]
    with open(os.path.join(folder, "reviews.csv"), "w") as f:
        f.write("text,label\n")
        f.writelines(f"{t},{int('seven' in t.split())}\n" for t in rows)


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
