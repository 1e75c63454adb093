"""Open-world detection metrics on hand-made detections with known answers, and against a per-detection loop."""

import math

import numpy as np
import pytest
import torch

from clcourse.detection_metrics import average_precision, class_curve, open_world_metrics

UNKNOWN = 99


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def image(det_rows, gt_rows):
    """det_rows: (x0, y0, x1, y1, score, label); gt_rows: (x0, y0, x1, y1, label)."""
    det = torch.tensor(det_rows, dtype=torch.float32).reshape(-1, 6)
    gt = torch.tensor(gt_rows, dtype=torch.float32).reshape(-1, 5)
    return (det[:, :4], det[:, 4], det[:, 5].long()), (gt[:, :4], gt[:, 4].long())


def test_a_hand_made_scene_gives_each_figure_by_hand():
    # class 1 found; an unknown object (class 5) taken for class 2 first, then class 2 found; the unknown found too
    det, gt = image([(0, 0, 10, 10, 0.9, 1), (40, 40, 50, 50, 0.8, 2), (20, 20, 30, 30, 0.7, 2),
                     (40, 40, 50, 50, 0.6, UNKNOWN)],
                    [(0, 0, 10, 10, 1), (20, 20, 30, 30, 2), (40, 40, 50, 50, 5)])
    metrics = open_world_metrics([det], [gt], known=[1, 2], unknown_label=UNKNOWN)
    assert metrics["ap"] == {1: 1.0, 2: 0.5}  # class 2: a false positive first, then its object: precision 1/2
    assert metrics["known_map"] == 0.75
    assert metrics["a_ose"] == 1 and metrics["unknown_objects"] == 1 and metrics["unknown_recall"] == 1.0
    # WI at recall 0.8: class 1 read at its 1st detection (0 open-set errors of 1), class 2 at its 2nd (1 of 2)
    assert metrics["wilderness_impact"] == pytest.approx((0 + 1) / 2 / ((1 + 2) / 2))


def test_ap_of_a_ranked_list_is_the_area_under_the_precision_envelope():
    # 2 objects: hit, miss, hit -> recall .5 .5 1, precision 1 .5 2/3 -> 0.5 * 1 + 0.5 * 2/3
    det, gt = image([(0, 0, 10, 10, 0.9, 1), (30, 30, 40, 40, 0.8, 1), (20, 20, 30, 30, 0.7, 1)],
                    [(0, 0, 10, 10, 1), (20, 20, 30, 30, 1)])
    curve = class_curve(1, [det], [gt], [boxes()])
    torch.testing.assert_close(curve.recall, torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64))
    assert curve.average_precision == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(torch.tensor([]), torch.tensor([])) == 0.0
    assert average_precision(torch.tensor([1.0]), torch.tensor([1.0])) == 1.0


def test_a_duplicate_is_a_false_positive_and_an_iou_of_exactly_the_threshold_is_no_match():
    det, gt = image([(0, 0, 10, 10, 0.9, 1), (0, 0, 10, 10, 0.8, 1), (20, 20, 30, 25, 0.7, 1)],
                    [(0, 0, 10, 10, 1), (20, 20, 30, 30, 1)])  # the last box covers half of its object: IoU 0.5
    curve = class_curve(1, [det], [gt], [boxes()])
    torch.testing.assert_close(curve.precision, torch.tensor([1.0, 0.5, 1 / 3], dtype=torch.float64))
    assert curve.recall[-1] == 0.5


def test_unknowns_detected_as_unknown_are_no_open_set_error_and_no_unknowns_gives_nan_recall():
    det, gt = image([(0, 0, 10, 10, 0.9, UNKNOWN)], [(0, 0, 10, 10, 7), (20, 20, 30, 30, 1)])
    metrics = open_world_metrics([det], [gt], known=[1], unknown_label=UNKNOWN)
    assert metrics["a_ose"] == 0 and metrics["unknown_recall"] == 1.0 and metrics["ap"] == {1: 0.0}
    det, gt = image([(0, 0, 10, 10, 0.9, 1)], [(0, 0, 10, 10, 1)])
    metrics = open_world_metrics([det], [gt], known=[1], unknown_label=UNKNOWN)
    assert math.isnan(metrics["unknown_recall"]) and metrics["wilderness_impact"] == 0.0 and metrics["known_map"] == 1


def _voc_loop(label, dets, gts, known, threshold=0.5):
    """VOC's evaluation of one class as ORE's code writes it, in numpy, one detection at a time."""
    def iou(a, b):
        iw = np.maximum(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0)
        ih = np.maximum(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0)
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)

    rows = [(i, s, b) for i, (bx, sc, lb) in enumerate(dets) for b, s, l_ in zip(bx.numpy(), sc.numpy(), lb.numpy())
            if l_ == label]
    rows.sort(key=lambda r: -r[1])
    recs = [{"bbox": gb.numpy()[gl.numpy() == label], "det": [False] * int((gl == label).sum())} for gb, gl in gts]
    unk = [gb.numpy()[~np.isin(gl.numpy(), known)] for gb, gl in gts]
    npos = sum(len(r["det"]) for r in recs)
    tp, fp, is_unk = np.zeros(len(rows)), np.zeros(len(rows)), np.zeros(len(rows))
    for d, (i, _, bb) in enumerate(rows):
        ovmax, jmax = -np.inf, -1
        if len(recs[i]["bbox"]):
            overlaps = iou(bb, recs[i]["bbox"])
            ovmax, jmax = overlaps.max(), overlaps.argmax()
        if ovmax > threshold and not recs[i]["det"][jmax]:
            tp[d], recs[i]["det"][jmax] = 1, True
        else:
            fp[d] = 1
        if len(unk[i]) and iou(bb, unk[i]).max() > threshold:
            is_unk[d] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return tp / max(npos, 1), tp / np.maximum(tp + fp, 1e-12), tp + fp, np.cumsum(is_unk)


def test_random_scenes_agree_with_a_per_detection_loop():
    g = torch.Generator().manual_seed(0)
    known, dets, gts = [1, 2, 3], [], []
    for _ in range(12):
        n = int(torch.randint(1, 6, (), generator=g))
        corner = torch.randint(0, 40, (n, 2), generator=g).float()
        gt_boxes = torch.cat([corner, corner + torch.randint(4, 12, (n, 2), generator=g)], 1)
        gt_labels = torch.randint(1, 6, (n,), generator=g)  # 4 and 5 are unknown
        m = int(torch.randint(0, 8, (), generator=g))
        pick = torch.randint(0, n, (m,), generator=g)
        det_boxes = gt_boxes[pick] + torch.randint(-3, 4, (m, 4), generator=g).float()
        det_labels = torch.tensor([1, 2, 3, UNKNOWN])[torch.randint(0, 4, (m,), generator=g)]
        dets.append((det_boxes, torch.rand(m, generator=g), det_labels))
        gts.append((gt_boxes, gt_labels))
    metrics = open_world_metrics(dets, gts, known=known, unknown_label=UNKNOWN)
    unknown_objects = [b[~torch.isin(lb, torch.tensor(known))] for b, lb in gts]
    for c in known:
        rec, prec, tp_fp, open_errors = _voc_loop(c, dets, gts, known)
        curve = class_curve(c, dets, gts, unknown_objects)
        np.testing.assert_allclose(curve.recall.numpy(), rec)
        np.testing.assert_allclose(curve.precision.numpy(), prec)
        np.testing.assert_allclose(curve.open_set_errors.numpy(), open_errors)
        assert metrics["ap"][c] == pytest.approx(average_precision(torch.tensor(rec), torch.tensor(prec)))
    assert metrics["a_ose"] == sum(int(_voc_loop(c, dets, gts, known)[3][-1]) for c in known)
    assert 0 < metrics["unknown_recall"] < 1 and metrics["wilderness_impact"] > 0


def test_bad_input_is_refused_with_what_was_expected():
    det, gt = image([(0, 0, 10, 10, 0.9, 1)], [(0, 0, 10, 10, 1)])
    with pytest.raises(ValueError, match="one entry per image"):
        open_world_metrics([det], [gt, gt], known=[1], unknown_label=UNKNOWN)
    with pytest.raises(ValueError, match="neither known"):
        open_world_metrics([(det[0], det[1], torch.tensor([4]))], [gt], known=[1], unknown_label=UNKNOWN)
    with pytest.raises(ValueError, match="not unknown_label"):
        open_world_metrics([det], [gt], known=[1, UNKNOWN], unknown_label=UNKNOWN)
    with pytest.raises(ValueError, match=r"float \[n, 4\]"):
        open_world_metrics([(det[0][:, :3], det[1], det[2])], [gt], known=[1], unknown_label=UNKNOWN)
    with pytest.raises(ValueError, match="scores must be"):
        open_world_metrics([(det[0], det[1][:0], det[2])], [gt], known=[1], unknown_label=UNKNOWN)
    with pytest.raises(ValueError, match="iou_threshold"):
        open_world_metrics([det], [gt], known=[1], unknown_label=UNKNOWN, iou_threshold=1.5)
