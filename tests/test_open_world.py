"""ORE's auto-labelled unknowns and the prototype store, on hand-made cases."""

import pytest
import torch

from clcourse.open_world import PrototypeStore, auto_label_unknowns


def test_auto_labelling_takes_the_best_proposals_that_overlap_no_annotated_box():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0],    # the annotated object itself
                              [20.0, 20.0, 30.0, 30.0],  # elsewhere
                              [0.0, 0.0, 10.0, 6.0],     # IoU 0.6 with the object: trained as it, not unknown
                              [0.0, 0.0, 10.0, 4.0],     # IoU 0.4: background, eligible
                              [40.0, 40.0, 50.0, 50.0]])
    objectness = torch.tensor([0.99, 0.5, 0.9, 0.8, 0.7])
    assert auto_label_unknowns(proposals, objectness, gt, k=2).tolist() == [3, 4]
    assert auto_label_unknowns(proposals, objectness, gt, k=10).tolist() == [3, 4, 1]
    assert auto_label_unknowns(proposals, objectness, gt, k=0).tolist() == []
    assert auto_label_unknowns(proposals, objectness, gt[:0], k=1).tolist() == [0]  # no annotation: the best
    with pytest.raises(ValueError, match="objectness must be"):
        auto_label_unknowns(proposals, objectness[:2], gt)
    with pytest.raises(ValueError, match=r"float \[n, 4\]"):
        auto_label_unknowns(proposals[:, :3], objectness, gt)


def test_the_store_is_a_fifo_per_class_and_its_means_ignore_empty_slots():
    store = PrototypeStore(num_classes=3, dim=2, items_per_class=2)
    store.add(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 0, 2]))
    means, present = store.class_means()
    torch.testing.assert_close(means, torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 4.0]]))
    assert present.tolist() == [True, False, True]
    store.add(torch.tensor([[5.0, 0.0]]), torch.tensor([0]))  # replaces the oldest of class 0 (1, 0)
    torch.testing.assert_close(store.class_means()[0][0], torch.tensor([4.0, 0.0]))
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\)"):
        store.add(torch.zeros(1, 2), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"features must be \[N, 2\]"):
        store.add(torch.zeros(1, 3), torch.tensor([0]))


def test_prototypes_start_at_the_means_then_move_with_momentum_on_schedule():
    store = PrototypeStore(num_classes=2, dim=1, items_per_class=1, momentum=0.9, start=10, update_every=5)
    store.add(torch.tensor([[2.0]]), torch.tensor([0]))
    assert not store.update(9) and not store.valid.any()  # burn-in
    assert store.update(10) and store.valid.tolist() == [True, False]
    torch.testing.assert_close(store.prototypes, torch.tensor([[2.0], [0.0]]))
    store.add(torch.tensor([[12.0], [7.0]]), torch.tensor([0, 1]))
    assert not store.update(11) and not store.update(14)
    assert store.update(15)
    torch.testing.assert_close(store.prototypes, torch.tensor([[0.9 * 2 + 0.1 * 12], [7.0]]))  # class 1: its mean
    assert store.valid.tolist() == [True, True]
    copy = PrototypeStore(num_classes=2, dim=1, items_per_class=1, momentum=0.9, start=10, update_every=5)
    copy.load_state_dict(store.state_dict())
    assert torch.equal(copy.prototypes, store.prototypes) and torch.equal(copy.counts, store.counts)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        PrototypeStore(2, 1, momentum=1.0)
    with pytest.raises(ValueError, match="items_per_class must be an int >= 1"):
        PrototypeStore(2, 1, items_per_class=0)


def test_exemplars_cover_every_class_and_stop_once_each_has_its_quota():
    from clcourse.open_world import select_exemplars

    labels = [torch.tensor(x) for x in ([0], [0, 1], [1], [2], [0, 2], [3], [1, 1], [0])]
    kept = select_exemplars(labels, classes=[0, 1, 2], per_class=2, seed=0)
    counts = {c: sum(int((labels[i] == c).sum()) for i in kept.tolist()) for c in (0, 1, 2)}
    assert all(n >= 2 for n in counts.values())
    assert 5 not in kept.tolist()  # holds only class 3, not among the balanced classes
    # every kept image was needed when it was visited: dropping the last one leaves some class short
    shorter = kept[:-1].tolist()
    assert any(sum(int((labels[i] == c).sum()) for i in shorter) < 2 for c in (0, 1, 2))
    assert torch.equal(kept, select_exemplars(labels, classes=[0, 1, 2], per_class=2, seed=0))
    everything = select_exemplars(labels, classes=[2], per_class=10)  # fewer than asked exist: all of them
    assert sorted(everything.tolist()) == [3, 4]
    with pytest.raises(ValueError, match="per_class must be a positive int"):
        select_exemplars(labels, classes=[0], per_class=0)
