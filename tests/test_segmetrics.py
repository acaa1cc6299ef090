import math

import pytest
import torch

from crossway.segmetrics import SegmentationScores, boundary, boundary_f1, dice_iou


def grid(rows: str) -> torch.Tensor:
    """'0000/0110/...' -> (H, W) long."""
    return torch.tensor([[int(c) for c in row] for row in rows.split("/")])


# a 2x2 square and a prediction one column too wide, reaching the right border
TRUE = grid("0000/0110/0110/0000")
PRED = grid("0000/0111/0111/0000")


def scores(pred, target, classes, **kw):
    s = SegmentationScores(classes, **kw)
    s.update(pred, target)
    return s.result()


def test_hand_computed_dice_iou_accuracy():
    r = scores(PRED[None], TRUE[None], 2, boundary_tolerance=0)
    # class 1: |T| = 4, |P| = 6, |P∩T| = 4; class 0: |T| = 12, |P| = 10, |P∩T| = 10
    assert r["dice_per_class"] == pytest.approx([20 / 22, 8 / 10])
    assert r["iou_per_class"] == pytest.approx([10 / 12, 4 / 6])
    assert r["dice"] == pytest.approx(0.8) and r["iou"] == pytest.approx(2 / 3)  # background left out
    assert r["pixel_accuracy"] == pytest.approx(14 / 16) and r["images"] == 1
    with_bg = scores(PRED[None], TRUE[None], 2, include_background=True)
    assert with_bg["dice"] == pytest.approx((20 / 22 + 0.8) / 2)
    assert with_bg["iou"] == pytest.approx((10 / 12 + 4 / 6) / 2)


def test_boundaries_exclude_the_image_border():
    assert torch.equal(boundary(TRUE[None] == 1)[0], TRUE == 1)  # every pixel of a 2x2 square is on its edge
    assert not boundary(torch.ones(1, 4, 4, dtype=torch.bool)).any()  # a full image has no boundary
    ring = boundary(TRUE[None] == 0)[0]  # the background's edge: the 8 ring pixels next to the square
    assert torch.equal(ring, grid("0110/1001/1001/0110").bool())


def test_hand_computed_boundary_f1():
    r = scores(PRED[None], TRUE[None], 2, boundary_tolerance=0)
    # class 1: 6 predicted edge pixels, the 4 true ones among them: P = 4/6, R = 1, F1 = 0.8
    # class 0: 8 and 8 edge pixels, 6 in common: P = R = 6/8
    assert r["boundary_f1_per_class"] == pytest.approx([0.75, 0.8])
    assert r["boundary_f1"] == pytest.approx(0.8)
    tolerant = scores(PRED[None], TRUE[None], 2, boundary_tolerance=1)  # every edge pixel within 1 of the other
    assert tolerant["boundary_f1_per_class"] == pytest.approx([1.0, 1.0])


def test_empty_masks_are_defined():
    empty, speck = torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long)
    speck[0, 0] = 1
    square = TRUE.clone()
    # image 1: class 1 found exactly; image 2: class 1 predicted but absent from the truth; class 2 never anywhere
    r = scores(torch.stack([square, speck]), torch.stack([square, empty]), 3)
    assert r["dice_per_class"][1:] == [0.5, 1.0] and r["iou_per_class"][1:] == [0.5, 1.0]
    assert r["boundary_f1_per_class"][1:] == [0.5, 1.0]
    assert r["dice"] == pytest.approx(0.75)
    nothing = scores(torch.stack([empty, empty]), torch.stack([empty, empty]), 3)  # all background, all right
    assert nothing["dice_per_class"] == [1.0, 1.0, 1.0] and nothing["boundary_f1_per_class"] == [1.0, 1.0, 1.0]
    missed = scores(empty[None], square[None], 2)  # a class in the truth, not predicted
    assert missed["dice"] == 0.0 and missed["iou"] == 0.0 and missed["boundary_f1"] == 0.0
    fresh = SegmentationScores(3).result()
    assert not any(math.isnan(v) for v in fresh["dice_per_class"] + [fresh["dice"], fresh["pixel_accuracy"]])


def test_dice_iou_function():
    dice, iou, counted = dice_iou(torch.stack([PRED, TRUE]), torch.stack([TRUE, TRUE]), 3)
    assert dice.shape == iou.shape == counted.shape == (2, 3)
    assert dice[0].tolist() == pytest.approx([20 / 22, 0.8, 1.0]) and dice[1].tolist() == [1.0, 1.0, 1.0]
    assert counted.tolist() == [[True, True, False], [True, True, False]]


def test_full_image_against_partial_boundary():
    full, holed = torch.ones(1, 5, 5, dtype=torch.long), torch.ones(1, 5, 5, dtype=torch.long)
    holed[0, 2, 2] = 0
    bf, counted = boundary_f1(full, full, 2)
    assert bf[0, 1] == 1.0 and counted[0].tolist() == [False, True]
    bf, _ = boundary_f1(holed, full, 2)  # the truth fills the image (no edge), the prediction has a hole's edge
    assert bf[0, 1] == 0.0


def test_streaming_equals_one_batch():
    torch.manual_seed(0)
    pred, target = torch.randint(0, 4, (6, 9, 11)), torch.randint(0, 4, (6, 9, 11))
    pred[3], target[3] = 0, 0
    whole, parts = SegmentationScores(4), SegmentationScores(4)
    whole.update(pred, target)
    for i, j in ((0, 3), (3, 5), (5, 6)):
        parts.update(pred[i:j], target[i:j])
    a, b = whole.result(), parts.result()
    assert a.keys() == b.keys() and a["images"] == b["images"] == 6
    for key in a:
        assert a[key] == pytest.approx(b[key])


def test_bad_inputs():
    with pytest.raises(ValueError, match="values"):
        SegmentationScores(2).update(torch.full((1, 2, 2), 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="shape|must both"):
        SegmentationScores(2).update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationScores(1)


@pytest.mark.parametrize("include_background", [False, True])
def test_matches_monai(include_background):
    monai = pytest.importorskip("monai.metrics")
    torch.manual_seed(0)
    B, K, H, W = 5, 4, 12, 10
    target, pred = torch.randint(0, K, (B, H, W)), torch.randint(0, K, (B, H, W))
    target[:, 0, :K] = torch.arange(K)  # every class in every truth mask: MONAI's ignore_empty never applies
    pred[1][pred[1] == 2] = 3  # a class in the truth but not predicted: 0 for both
    onehot = lambda x: torch.nn.functional.one_hot(x, K).permute(0, 3, 1, 2).float()  # noqa: E731
    ours = scores(pred, target, K, include_background=include_background)
    first = 0 if include_background else 1
    for name, metric in (("dice", monai.DiceMetric), ("iou", monai.MeanIoU)):
        for reduction in ("mean", "mean_batch"):  # over images and classes; per class
            m = metric(include_background=include_background, reduction=reduction)
            m(onehot(pred), onehot(target))
            theirs = m.aggregate()
            if reduction == "mean":
                assert ours[name] == pytest.approx(float(theirs), abs=1e-6)
            else:
                assert ours[f"{name}_per_class"][first:] == pytest.approx(theirs.tolist(), abs=1e-6)


def test_ignored_pixels_are_scored_for_no_class():
    target = torch.tensor([[[1, 1, 255, 255], [0, 0, 255, 255]]])
    pred = torch.tensor([[[1, 1, 1, 0], [0, 0, 1, 1]]])  # wrong only where the truth is ignored
    s = SegmentationScores(2, include_background=True)
    s.update(pred, target)
    r = s.result()
    assert r["pixel_accuracy"] == 1.0 and r["dice"] == 1.0 and r["iou"] == 1.0
