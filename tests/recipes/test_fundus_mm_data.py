"""The image–text recipe's data (real layouts → tables with captions) and its evaluation helpers."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qualcl.recipes.fundus_mm.config import DataConfig
from qualcl.recipes.fundus_mm.data import PairDataset, load_fundus_mm_data
from qualcl.recipes.fundus_mm.evaluate import few_shot_indices, prompt_head_classify, prompt_head_fit, text_recall
from qualcl.recipes.fundus_mm.modules import zero_shot_logits
from qualcl.recipes.fundus_mm.prompts import class_prompts


def _png(path: Path, value: int = 90):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20, 3), value, np.uint8)).save(path)


def test_aptos_tables_have_class_level_captions(tmp_path):
    rows = ["id_code,diagnosis"] + [f"img{i:02d},{i % 5}" for i in range(40)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    for i in range(40):
        _png(tmp_path / "train_images" / f"img{i:02d}.png")
    data = load_fundus_mm_data(DataConfig(dataset="aptos", data_dir=str(tmp_path), image_size=32), tmp_path)
    assert data.class_level and len(data.train) + len(data.val) + len(data.test) == 40
    prompts = class_prompts("dr")
    for table in (data.train, data.val, data.test):
        assert table.quality_names == ("unrated",) and table.images.shape[-1] == 32
        assert table.caption == [prompts[int(y)][-1] for y in table.label]
    patients = [set(t.patient) for t in (data.train, data.val, data.test)]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])


def test_fives_tables_use_the_official_split_and_quality(tmp_path):
    import openpyxl

    book = openpyxl.Workbook()
    book.remove(book.active)
    for split, names in (("train", [f"{i}_{'ADGN'[i % 4]}" for i in range(1, 25)]), ("test", ["30_N", "31_G", "32_A"])):
        sheet = book.create_sheet(split)
        sheet.append(["Number", "Disease", "IC", "Blur", "LC"])
        for name in names:
            _png(tmp_path / split / "Original" / f"{name}.png")
            _png(tmp_path / split / "Ground truth" / f"{name}.png", 255)
            number = int(name.split("_")[0])
            sheet.append([number, name[-1], 1, int(number % 3 != 0), 1])
    book.save(tmp_path / "Quality Assessment.xlsx")
    data = load_fundus_mm_data(DataConfig(dataset="fives", data_dir=str(tmp_path), image_size=32), tmp_path)
    assert len(data.test) == 3 and data.test.label.tolist() == [0, 2, 3]
    assert data.test.quality.tolist() == [1, 0, 0]  # 30 % 3 == 0: blurred → Low
    assert data.train.quality_names == ("Good", "Low") and len(data.train) + len(data.val) == 24


def test_pair_dataset_items_and_errors(tmp_path):
    from qualcl.data.table import ImageTable

    table = ImageTable(torch.full((2, 3, 8, 8), 255, dtype=torch.uint8), torch.tensor([1, 2]), torch.tensor([0, 1]),
                       quality_names=("Good", "Low"), caption=["a", "b"])  # fmt: skip
    dataset = PairDataset(table, torch.tensor([[1, 5, 2], [1, 6, 2]]))
    image, ids, label, quality = dataset[1]
    assert image.max() == 1.0 and ids.tolist() == [1, 6, 2] and (label, quality) == (2, 1)
    with pytest.raises(ValueError, match="ids has 1 rows for 2 images"):
        PairDataset(table, torch.tensor([[1, 2]]))


def test_text_recall_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
    captions = [f"c{i % 5}" for i in range(12)]
    got = text_recall(images, texts, captions, [1, 3, 20])
    sims = images @ texts.T
    for k in (1, 3, 20):
        kk = min(k, 12)
        i2t = sum(any(captions[j] == captions[i] for j in sims[i].topk(kk).indices.tolist()) for i in range(12)) / 12
        t2i = sum(any(captions[j] == captions[i] for j in sims[:, i].topk(kk).indices.tolist()) for i in range(12)) / 12
        assert got[f"i2t_r@{k}"] == pytest.approx(i2t) and got[f"t2i_r@{k}"] == pytest.approx(t2i)
    assert got["i2t_r@20"] == 1.0


def test_few_shot_draws_k_per_class_and_the_prompt_head_starts_at_zero_shot():
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 5)
    rows = few_shot_indices(labels, 4, 3, seed=1)
    assert torch.bincount(labels[rows], minlength=3).tolist() == [4, 3, 4]
    assert torch.equal(rows, few_shot_indices(labels, 4, 3, seed=1))
    assert not torch.equal(rows, few_shot_indices(labels, 4, 3, seed=2))
    g = torch.Generator().manual_seed(0)
    classes = torch.nn.functional.normalize(torch.randn(3, 6, generator=g), dim=1)
    test = torch.nn.functional.normalize(torch.randn(20, 6, generator=g), dim=1)
    train = torch.nn.functional.normalize(torch.randn(9, 6, generator=g), dim=1)
    y = torch.tensor([0, 1, 2] * 3)
    zero = zero_shot_logits(test, classes).argmax(1)
    assert torch.equal(prompt_head_classify(prompt_head_fit(train, y, classes, scale=10.0, epochs=0), test), zero)
    tuned = prompt_head_classify(prompt_head_fit(train, y, classes, scale=10.0, epochs=300, lr=0.05), train)
    assert torch.equal(tuned, y)  # nine points, three classes: the head fits them
