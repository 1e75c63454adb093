import numpy as np
import pytest
import torch

from clcourse.evaluate import (
    PROTOCOLS,
    alignment_uniformity,
    aspect_scores,
    class_compactness,
    effective_rank,
    evaluate_representation,
    evaluate_segmentation,
    extract_features,
    finetune_segmentation,
    knn_accuracy,
    linear_probe,
    sample_labelled,
    segmentation_rows,
)


def blobs(n_per_class=30, n_classes=4, dim=8, spread=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g) * 3
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    return x, y


def test_sample_labelled_is_stratified_and_keeps_every_class():
    y = np.repeat(np.arange(10), 50)
    idx = sample_labelled(y, fraction=0.01, seed=0)
    assert sorted(y[idx]) == list(range(10))  # 1% of 50 rounds to 0: each class keeps one
    idx10 = sample_labelled(y, fraction=0.1, seed=1)
    assert np.bincount(y[idx10]).tolist() == [5] * 10
    assert len(sample_labelled(y, per_class=3)) == 30
    assert not np.array_equal(sample_labelled(y, per_class=3, seed=0), sample_labelled(y, per_class=3, seed=1))
    with pytest.raises(ValueError, match="exactly one"):
        sample_labelled(y)


def test_linear_probe_separable_blobs():
    x, y = blobs()
    res = linear_probe(x, y, x, y, labels_per_class=2, seeds=(0, 1))
    assert res.mean == 1.0 and res.n_labels == 8 and len(res.accuracies) == 2


def test_linear_probe_chance_on_noise():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 8, generator=g), torch.randint(0, 4, (400,), generator=g)
    res = linear_probe(x[:200], y[:200], x[200:], y[200:])
    assert res.mean < 0.45


def test_linear_probe_rejects_mismatch():
    x, y = blobs()
    with pytest.raises(ValueError, match=r"labels must be \[N\]"):
        linear_probe(x, y[:-1], x, y)


def test_knn_accuracy():
    x, y = blobs()
    assert knn_accuracy(x, y, x, y, k=5) == 1.0
    with pytest.raises(ValueError, match="temperature"):
        knn_accuracy(x, y, x, y, temperature=0)


def test_knn_majority_weighting():
    train = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    assert knn_accuracy(train, labels, torch.tensor([[1.0, 0.05]]), torch.tensor([0]), k=3) == 1.0


def test_extract_features_from_tensor_pair_and_dataset():
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    images, labels = torch.rand(10, 1, 2, 2), torch.arange(10)
    f, y = extract_features(enc, (images, labels), batch_size=3)
    assert f.shape == (10, 3) and torch.equal(y, labels)
    f2, y2 = extract_features(enc, torch.utils.data.TensorDataset(images, labels), batch_size=4)
    assert torch.allclose(f, f2) and torch.equal(y2, labels)
    f3, none = extract_features(enc, images)
    assert none is None and torch.allclose(f3, f)


def test_extract_features_restores_training_mode():
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    enc.train()
    extract_features(enc, torch.rand(2, 1, 2, 2))
    assert enc.training


def test_alignment_uniformity_identical_views():
    z = torch.randn(50, 4)
    au = alignment_uniformity(z, z)
    assert au["alignment"] == pytest.approx(0.0, abs=1e-6)
    assert au["uniformity"] < 0


def test_effective_rank_detects_collapse():
    g = torch.Generator().manual_seed(0)
    assert effective_rank(torch.randn(500, 8, generator=g)) > 7.5
    line = torch.randn(500, 1, generator=g) * torch.ones(1, 8)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(torch.ones(10, 4)) == 1.0
    with pytest.raises(ValueError, match="N >= 2"):
        effective_rank(torch.randn(1, 4))


def test_the_representation_protocol_reports_knn_probes_and_rank():
    x, y = blobs(n_per_class=30)
    images = x.view(-1, 2, 2, 2)  # an "image" batch whose encoder just flattens it
    encoder = torch.nn.Flatten()
    metrics = evaluate_representation(encoder, (images, y), (images, y), knn_k=5, draws=2)
    assert metrics["knn"] == {"accuracy": 1.0, "k": 5, "temperature": 0.07}
    assert set(metrics["linear_probe"]) == {"1%", "10%", "100%"} and metrics["feature_dim"] == 8
    assert metrics["linear_probe"]["10%"]["draws"] == 2 and metrics["linear_probe"]["100%"]["draws"] == 1
    assert metrics["linear_probe"]["100%"]["mean"] == 1.0 and 1 <= metrics["effective_rank"] <= 8

    protocol = PROTOCOLS["representation"]
    method = torch.nn.Module()
    method.encoder = encoder
    assert protocol.run(method, (images, y), (images, y), knn_k=5, draws=2) == metrics
    rows = dict(protocol.rows(metrics))
    assert rows["kNN (k=5)"] == "100.0%" and rows["linear probe 100%"].startswith("100.0% (120 labels")


def test_class_compactness_closed_forms():
    e1, e2 = torch.eye(3)[0], torch.eye(3)[1]
    # two classes on opposite points: within 1, between -1
    opposite = class_compactness(torch.stack([e1, e1, -e1, -e1]), torch.tensor([0, 0, 1, 1]))
    assert opposite == pytest.approx({"within": 1.0, "between": -1.0, "gap": 2.0})
    # an offset shared by everyone: centring removes it; without centring, orthogonal classes give 0
    offset = torch.tensor([5.0, 5.0, 5.0])
    shifted = torch.stack([offset + e1, offset + e1, offset + e2, offset + e2])
    labels = torch.tensor([0, 0, 1, 1])
    assert class_compactness(shifted, labels) == pytest.approx({"within": 1.0, "between": -1.0, "gap": 2.0})
    plain = class_compactness(torch.stack([e1, e1, e2, e2]), labels, center=False)
    assert plain == pytest.approx({"within": 1.0, "between": 0.0, "gap": 1.0})
    # ten classes on the vertices of a regular simplex (centred one-hot vectors): between = -1/9
    simplex = torch.eye(10).repeat(3, 1)
    result = class_compactness(simplex, torch.arange(10).repeat(3))
    assert result["within"] == pytest.approx(1.0) and result["between"] == pytest.approx(-1 / 9)
    # one pair per label type: within = cos(a, b) of the two same-label points (uncentred)
    pts = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    mixed = class_compactness(pts, torch.tensor([0, 0, 1]), center=False)
    r = 1 / 2**0.5
    assert mixed["within"] == pytest.approx(r) and mixed["between"] == pytest.approx((0 + r) / 2)


def test_class_compactness_rejects_bad_input():
    with pytest.raises(ValueError, match="two points of one class"):
        class_compactness(torch.randn(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="two points of one class"):
        class_compactness(torch.randn(3, 2), torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match=r"\[N\]"):
        class_compactness(torch.randn(3, 2), torch.tensor([0, 1]))


# --------------------------------------------------------------------------- dense predictions


def test_segmentation_scores_on_a_hand_made_case():
    """3 classes on a 2 x 3 map: class 0 right 1 of 2 times, class 1 2 of 3, class 2 predicted once wrongly;
    one pixel ignored."""
    from clcourse.data import IGNORE_INDEX
    from clcourse.evaluate import confusion_matrix, dice, iou_per_class, mean_iou

    target = torch.tensor([[[0, 0, 1], [1, 1, IGNORE_INDEX]]])
    pred = torch.tensor([[[0, 2, 1], [1, 0, 2]]])
    assert confusion_matrix(pred, target, 3).tolist() == [[1, 0, 1], [1, 2, 0], [0, 0, 0]]
    # IoU: class 0: 1 / (1 + 1 + 1) = 1/3; class 1: 2 / (2 + 0 + 1) = 2/3; class 2: 0 / (0 + 1 + 0) = 0
    torch.testing.assert_close(iou_per_class(pred, target, 3), torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64))
    assert mean_iou(pred, target, 3) == pytest.approx(1 / 3)
    assert mean_iou(pred, target, 4) == pytest.approx(1 / 3)  # an absent class is not averaged in
    assert dice(pred, target, foreground=1) == pytest.approx(2 * 2 / (2 + 3))
    assert dice(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long)) == 1.0  # no foreground


def test_segmentation_scores_refuse_bad_input():
    from clcourse.evaluate import dice, mean_iou

    with pytest.raises(ValueError, match="logits.argmax"):
        mean_iou(torch.rand(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="same shape"):
        mean_iou(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        mean_iou(torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="num_classes"):
        mean_iou(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="integer tensor"):
        dice(torch.zeros(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.long))


def test_dense_data_checks_and_subsets():
    from clcourse.data import IGNORE_INDEX, DenseData

    images, masks = torch.rand(3, 1, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long)
    masks[0, 1:3, 1:3], masks[2, 0, 0] = 1, IGNORE_INDEX
    boxes = [torch.tensor([[1.0, 1.0, 3.0, 3.0]]), torch.zeros(0, 4), torch.zeros(0, 4)]
    labels = [torch.tensor([1]), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)]
    data = DenseData(images, masks, boxes, labels, ("background", "lesion"))
    part = data.subset(torch.tensor([True, False, True]))
    assert len(part) == 2 and part.boxes[0].tolist() == [[1.0, 1.0, 3.0, 3.0]] and part.num_classes == 2
    assert torch.equal(part[1][1], masks[2])
    with pytest.raises(ValueError, match="mask values"):
        DenseData(images, masks + 2, boxes, labels, ("background", "lesion"))
    with pytest.raises(ValueError, match="int64"):
        DenseData(images, masks.int(), boxes, labels, ("background", "lesion"))
    with pytest.raises(ValueError, match="one entry per image"):
        DenseData(images, masks, boxes[:2], labels, ("background", "lesion"))


# --------------------------------------------------------------------------- segmentation protocols


class Oracle(torch.nn.Module):
    """A perfect segmenter of images that carry their class in their pixel value: logits -scale (x - k)^2.

    Returns a ``SegmenterOutput`` (logits, embeddings) with ``named``, bare logits otherwise; trains by
    cross-entropy (a larger scale only sharpens the same argmax).
    """

    def __init__(self, num_classes, named=False):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(4.0))
        self.num_classes, self.named = num_classes, named

    def forward(self, x):
        from clcourse.encoders import SegmenterOutput

        logits = -self.scale * (x - torch.arange(self.num_classes).view(1, -1, 1, 1)) ** 2
        return SegmenterOutput(logits, x) if self.named else logits

    def training_step(self, batch):
        images, masks = batch
        return torch.nn.functional.cross_entropy(self(images), masks, ignore_index=255)


def dense_set(num_classes, names, n=6, size=8, seed=0):
    """Images that equal their masks (as floats), so that Oracle segments them perfectly; one pixel ignored."""
    from clcourse.data import IGNORE_INDEX, DenseData

    masks = torch.randint(0, num_classes, (n, size, size), generator=torch.Generator().manual_seed(seed))
    images = masks.unsqueeze(1).float()
    masks[0, 0, 0] = IGNORE_INDEX  # counted by no score (Oracle predicts class 0 there)
    empty = [torch.zeros(0, 4)] * n
    return DenseData(images, masks, empty, [torch.zeros(0, dtype=torch.long)] * n, names)


def test_the_segmentation_protocol_scores_a_perfect_segmenter_1_and_an_all_background_one_by_its_iou():
    data = dense_set(3, ("background", "disc", "cross"))
    method = torch.nn.Module()
    method.encoder = Oracle(3, named=True)
    protocol = PROTOCOLS["segmentation"]
    metrics = protocol.run(method, None, data, device="cpu")
    assert metrics == {"mean_iou": 1.0, "iou_per_class": {"background": 1.0, "disc": 1.0, "cross": 1.0},
                       "dice": {"disc": 1.0, "cross": 1.0}, "num_classes": 3, "test_images": 6}
    rows = dict(protocol.rows(metrics))
    assert rows == {"mIoU": "100.0% over 3 classes (6 test images)",
                    "IoU per class": "background 100.0, disc 100.0, cross 100.0"}

    blind = Oracle(3)
    with torch.no_grad():
        blind.scale.zero_()  # all logits equal: argmax 0, the background everywhere
    counted = data.masks[data.masks != 255]
    share = (counted == 0).double().mean().item()  # background IoU = its share of the counted pixels
    metrics = evaluate_segmentation(blind, data)
    assert metrics["iou_per_class"] == {"background": pytest.approx(share), "disc": 0.0, "cross": 0.0}
    assert metrics["mean_iou"] == pytest.approx(share / 3) and metrics["dice"] == {"disc": 0.0, "cross": 0.0}
    assert "disc 0.0" in dict(protocol.rows(metrics))["IoU per class"]

    absent = evaluate_segmentation(Oracle(4), dense_set(3, ("background", "disc", "cross", "star")))
    assert absent["iou_per_class"]["star"] is None and absent["mean_iou"] == 1.0  # neither predicted nor present
    assert dict(segmentation_rows(absent))["IoU per class"].endswith("star -")


class Pretrained(torch.nn.Module):
    """Stands in for PCRL: segmentation_model(num_classes, class_weights) gives a fresh Oracle."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def segmentation_model(self, num_classes, class_weights=None):
        return Oracle(num_classes)


def test_the_finetune_protocol_trains_the_segmentation_model_and_scores_dice_and_miou():
    labelled, test = dense_set(2, ("background", "lesion"), n=8), dense_set(2, ("background", "lesion"), seed=1)
    protocol = PROTOCOLS["finetune-segmentation"]
    metrics = protocol.run(Pretrained(), labelled, test, device="cpu", steps=3, lr=0.1, batch_size=4)
    assert metrics["dice"] == {"lesion": 1.0} and metrics["mean_iou"] == 1.0 and metrics["test_images"] == 6
    tuned = metrics["finetune"]
    assert (tuned["steps"], tuned["labelled_images"], tuned["batch_size"], tuned["class_weights"]) == (3, 8, 4, None)
    assert tuned["final_loss"] < tuned["first_loss"]  # the scale grew: the same argmax, surer
    rows = dict(protocol.rows(metrics))
    assert rows["Dice"] == "lesion 100.0%" and rows["mIoU"].startswith("100.0% over 2 classes")
    assert rows["fine-tuned"].startswith("3 steps on 8 labelled images, loss ")


def test_fine_tuning_a_pcrl_u_net_is_deterministic_and_leaves_the_method_and_the_global_rng_alone():
    from clcourse.data import make_lesions
    from clcourse.device import torch_threads
    from clcourse.methods import PCRL
    from clcourse.unet import UNetEncoder

    torch.manual_seed(0)
    method = PCRL(UNetEncoder(1, (4, 8, 16)), projection_dim=8, queue_size=64)
    labelled, test = make_lesions(8, 32, seed=2), make_lesions(4, 32, seed=1)
    before, rng = {k: v.clone() for k, v in method.state_dict().items()}, torch.get_rng_state()
    with torch_threads(1):
        first, second = (finetune_segmentation(method, labelled, test, steps=2, batch_size=4, seed=3,
                                               class_weights=(1, 10)) for _ in range(2))
        other = finetune_segmentation(method, labelled, test, steps=2, batch_size=4, seed=4)
    assert first == second and first["finetune"]["first_loss"] != other["finetune"]["first_loss"]
    assert first["finetune"]["class_weights"] == [1.0, 10.0] and set(first["dice"]) == {"lesion"}
    assert 0 <= first["dice"]["lesion"] <= 1 and 0 <= first["mean_iou"] <= 1
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in method.state_dict().items())
    with pytest.raises(ValueError, match="larger than the dataset"):
        finetune_segmentation(method, labelled, test, steps=1, batch_size=16)


def test_finetune_segmenter_returns_the_model_that_finetune_segmentation_scores():
    from clcourse.data import make_lesions
    from clcourse.device import torch_threads
    from clcourse.evaluate import evaluate_segmentation, finetune_segmenter
    from clcourse.methods import PCRL
    from clcourse.unet import UNet, UNetEncoder

    torch.manual_seed(0)
    method = PCRL(UNetEncoder(1, (4, 8)), projection_dim=8, queue_size=64)
    labelled, test = make_lesions(8, 32, seed=2), make_lesions(4, 32, seed=1)
    with torch_threads(1):
        model, history = finetune_segmenter(method, labelled, steps=3, batch_size=4, seed=5, class_weights=(1, 10))
        scored = finetune_segmentation(method, labelled, test, steps=3, batch_size=4, seed=5, class_weights=(1, 10))
    assert isinstance(model, UNet) and model is not method and history.steps == 3
    assert evaluate_segmentation(model, test)["dice"] == scored["dice"]
    assert scored["finetune"]["final_loss"] == history.step_loss[-1]


def test_aspect_scores_are_one_for_a_perfect_prediction_even_with_neutral_sentences():
    gold = torch.tensor([0, 1, 2, 3, -1, -1, 2])
    scores = aspect_scores(gold.clone(), gold, 4)
    for key in ("precision", "recall", "f1"):
        torch.testing.assert_close(scores[key], torch.ones(4, dtype=torch.float64))
    assert scores["macro_f1"].item() == 1.0


def test_aspect_scores_of_a_known_confusion():
    gold = torch.tensor([0, 0, 0, 1, 1, -1, -1])
    predicted = torch.tensor([0, 0, 1, 1, -1, 0, -1])
    scores = aspect_scores(predicted, gold, 2)
    # aspect 0: predicted at 0, 1, 5 (5 is neutral: a false positive), gold at 0, 1, 2 -> P = R = F1 = 2/3;
    # aspect 1: predicted at 2, 3, gold at 3, 4 (4 left general: a false negative) -> P = R = F1 = 1/2
    torch.testing.assert_close(scores["precision"], torch.tensor([2 / 3, 1 / 2], dtype=torch.float64))
    torch.testing.assert_close(scores["recall"], torch.tensor([2 / 3, 1 / 2], dtype=torch.float64))
    torch.testing.assert_close(scores["f1"], torch.tensor([2 / 3, 1 / 2], dtype=torch.float64))
    assert scores["macro_f1"].item() == pytest.approx(7 / 12)
    # precision 1 and recall 1/3 give F1 2 * 1/3 / (4/3) = 1/2; an aspect never predicted scores 0, not NaN
    lopsided = aspect_scores(torch.tensor([0, -1, -1, -1]), torch.tensor([0, 0, 0, 1]), 2)
    torch.testing.assert_close(lopsided["f1"], torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert lopsided["precision"][1].item() == 0.0 and lopsided["macro_f1"].item() == pytest.approx(0.25)


@pytest.mark.parametrize("predicted, gold, k, message", [
    (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), 2, "integer tensor"),
    (torch.tensor([0, 1, 1]), torch.tensor([0, 1]), 2, "same length"),
    (torch.tensor([0, 2]), torch.tensor([0, 1]), 2, r"outside \[-1, 2\)"),
    (torch.tensor([0, 1]), torch.tensor([0, 1]), 0, "positive int"),
])
def test_aspect_scores_name_bad_input(predicted, gold, k, message):
    with pytest.raises(ValueError, match=message):
        aspect_scores(predicted, gold, k)
