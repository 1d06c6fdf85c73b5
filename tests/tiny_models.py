"""Small local model folders for tests (random init, written on the fly: nothing downloads)."""

import torch

WORDS = "left right eye fundus photograph no mild moderate severe proliferative diabetic retinopathy lesions"
WORDS += " micro ##aneurysms ex ##udates good usable reject quality , . : with of an a"


def write_tiny_bert(folder):
    """A randomly initialised two-layer BERT and its WordPiece tokenizer in a local Hugging Face folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split()]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))  # a vocabulary file: transformers 4 and 5
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(str(folder))
    return folder
