"""Pixel contrast (clcourse.methods.PixelContrast): eq. 3 against a loop, closed forms, memories, hard anchors, resume."""

import math

import pytest
import torch
import torch.nn.functional as F

from clcourse.encoders import SegmenterOutput, SmallSegmenter
from clcourse.losses import pixel_contrast
from clcourse.methods.base import Method
from clcourse.methods.pixel_contrast import PixelContrast, nearest_labels


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and keeps this file's time steady on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def loop_loss(anchors, anchor_labels, contrast, contrast_labels, t, self_index=None):
    """[1] eq. 3 in float64, one anchor and one positive at a time, anchors without a positive skipped."""
    a, c = F.normalize(anchors.double(), dim=1), F.normalize(contrast.double(), dim=1)
    losses = []
    for i in range(len(a)):
        own = -1 if self_index is None else int(self_index[i])
        positives = [j for j in range(len(c)) if contrast_labels[j] == anchor_labels[i] and j != own]
        negatives = [j for j in range(len(c)) if contrast_labels[j] != anchor_labels[i]]
        if not positives:
            continue
        negative_sum = sum((torch.exp(a[i] @ c[n] / t) for n in negatives), torch.tensor(0.0, dtype=torch.float64))
        terms = [-torch.log(torch.exp(a[i] @ c[p] / t) / (torch.exp(a[i] @ c[p] / t) + negative_sum))
                 for p in positives]
        losses.append(sum(terms) / len(terms))
    return sum(losses) / len(losses)


def make_model(**kw):
    torch.manual_seed(0)
    kw.setdefault("generator", torch.Generator().manual_seed(1))
    kw.setdefault("anchors_per_class", 4)
    kw.setdefault("pixel_memory_size", 6)
    kw.setdefault("pixels_per_image", 2)
    kw.setdefault("region_memory_size", 3)
    return PixelContrast(SmallSegmenter(1, 3, width=4, embedding_dim=8), 3, **kw)


def scenes(b=4, size=8, seed=0, ignored=True):
    """Random images [B, 1, size, size] and blocky masks [B, size, size] of 3 classes, a corner of 255s."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 3, (b, size // 2, size // 2), generator=g).repeat_interleave(2, 1).repeat_interleave(2, 2)
    if ignored:
        masks[:, :2, :2] = 255
    return torch.rand(b, 1, size, size, generator=g), masks


# --------------------------------------------------------------------------- the loss


def test_the_loss_is_the_per_anchor_loop_in_float64():
    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(7, 5, generator=g, dtype=torch.float64)
    memory = torch.randn(9, 5, generator=g, dtype=torch.float64)
    anchor_labels, memory_labels = torch.tensor([0, 0, 1, 2, 1, 0, 3]), torch.tensor([0, 1, 1, 2, 2, 2, 0, 1, 4])
    contrast, contrast_labels = torch.cat([anchors, memory]), torch.cat([anchor_labels, memory_labels])
    self_index = torch.arange(7)
    for t in (0.1, 0.5):
        expected = loop_loss(anchors, anchor_labels, contrast, contrast_labels, t, self_index)
        torch.testing.assert_close(pixel_contrast(anchors, anchor_labels, contrast, contrast_labels, t,
                                                  self_index=self_index), expected)
    # anchor 6 (class 3) has no positive and is skipped; the anchors alone: self excluded on the diagonal
    torch.testing.assert_close(pixel_contrast(anchors, anchor_labels, temperature=0.2),
                               loop_loss(anchors, anchor_labels, anchors, anchor_labels, 0.2, torch.arange(7)))
    torch.testing.assert_close(pixel_contrast(anchors, anchor_labels, anchors, anchor_labels, 0.2),
                               pixel_contrast(anchors, anchor_labels, temperature=0.2))
    # each positive has its own denominator: not SupCon's, whose denominator also holds the other positives
    a, c = F.normalize(anchors[:6], dim=1), F.normalize(contrast, dim=1)
    logits = (a @ c.T / 0.1).masked_fill(F.one_hot(torch.arange(6), 16).bool(), float("-inf"))
    positive = (anchor_labels[:6, None] == contrast_labels[None]) & ~F.one_hot(torch.arange(6), 16).bool()
    supcon = -(logits.log_softmax(1).masked_fill(~positive, 0).sum(1) / positive.sum(1)).mean()
    assert not torch.allclose(pixel_contrast(anchors, anchor_labels, contrast, contrast_labels, 0.1,
                                             self_index=self_index), supcon)


def test_closed_forms():
    same = torch.ones(5, 3)
    # all embeddings equal: every term is log(1 + |N_i|); anchors 0-2 (class 0) have 2 negatives, 3-4 have 3
    labels = torch.tensor([0, 0, 0, 1, 1])
    expected = (3 * math.log(3) + 2 * math.log(4)) / 5
    torch.testing.assert_close(pixel_contrast(same, labels, temperature=0.1), torch.tensor(expected))
    memory_labels = torch.tensor([0, 2, 2, 2])
    torch.testing.assert_close(pixel_contrast(same[:2], labels[:2], torch.ones(4, 3), memory_labels, 0.07),
                               torch.tensor(math.log(4)))
    # one direction per class: positives at cosine 1, the 3 negatives at 0, l_i = log(1 + 3 e^{-1/t});
    # the class-2 anchor has no positive and is skipped
    one_hot = torch.eye(3)[[0, 0, 1, 1, 2]]
    t = 0.25
    torch.testing.assert_close(pixel_contrast(one_hot, torch.tensor([0, 0, 1, 1, 2]), temperature=t),
                               torch.tensor(math.log(1 + 3 * math.exp(-1 / t))))
    assert pixel_contrast(one_hot, torch.tensor([0, 0, 1, 1, 2]), temperature=0.01) < 1e-30


def test_an_anchor_is_never_its_own_positive():
    g = torch.Generator().manual_seed(1)
    anchors, memory = torch.randn(4, 6, generator=g), torch.randn(5, 6, generator=g)
    labels, memory_labels = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0, 1])
    contrast, contrast_labels = torch.cat([memory[:2], anchors, memory[2:]]), torch.cat([memory_labels[:2], labels,
                                                                                        memory_labels[2:]])
    own = torch.arange(2, 6)  # the anchors sit at rows 2..5
    expected = loop_loss(anchors, labels, contrast, contrast_labels, 0.1, own)
    loss = pixel_contrast(anchors, labels, contrast, contrast_labels, 0.1, self_index=own)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    # without self_index each anchor counts its own row, at cosine 1, as a positive: a lower loss
    assert pixel_contrast(anchors, labels, contrast, contrast_labels, 0.1) < loss - 0.1
    # -1: that anchor is not in the contrast set
    partly = torch.tensor([2, -1, 4, 5])
    torch.testing.assert_close(pixel_contrast(anchors, labels, contrast, contrast_labels, 0.1, self_index=partly).double(),
                               loop_loss(anchors, labels, contrast, contrast_labels, 0.1, partly), rtol=1e-5, atol=1e-6)


def test_anchors_without_positives_or_negatives():
    x = torch.randn(3, 4, requires_grad=True)
    # no anchor has a positive: 0, in the graph, with zero gradient
    loss = pixel_contrast(x, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros(3, 4))
    # one class only: no negatives, every term is -log(e^l / e^l) = 0, and the gradient stays finite
    x.grad = None
    loss = pixel_contrast(x, torch.tensor([5, 5, 5]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(x.grad).all()


def test_gradients_reach_anchors_and_contrast_and_small_temperatures_stay_finite():
    g = torch.Generator().manual_seed(2)
    anchors = torch.randn(6, 4, generator=g, requires_grad=True)
    contrast = torch.randn(8, 4, generator=g, requires_grad=True)
    labels, contrast_labels = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loss = pixel_contrast(anchors, labels, contrast, contrast_labels, 0.1)
    loss.backward()
    assert anchors.grad.abs().sum() > 0 and contrast.grad.abs().sum() > 0
    memory = contrast.detach()
    anchors.grad = None
    pixel_contrast(anchors, labels, memory, contrast_labels, 0.1).backward()
    assert anchors.grad.abs().sum() > 0 and memory.grad is None
    # t = 0.005: exp(s / t) reaches e^200, beyond float32; float32 still agrees with float64
    small = pixel_contrast(anchors.detach(), labels, memory, contrast_labels, 0.005)
    assert torch.isfinite(small)
    torch.testing.assert_close(small.double(), pixel_contrast(anchors.detach().double(), labels, memory.double(),
                                                              contrast_labels, 0.005), rtol=1e-5, atol=1e-5)


def test_the_loss_promotes_half_precision():
    x = torch.randn(6, 4).bfloat16()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert pixel_contrast(x, labels).dtype == torch.float32


@pytest.mark.parametrize("args, kwargs, error, message", [
    (([[1.0]], torch.tensor([0])), {}, TypeError, "anchors"),
    ((torch.randn(3), torch.tensor([0, 0, 1])), {}, ValueError, r"anchors must be 2-D \[N, D\]"),
    ((torch.randn(0, 4), torch.zeros(0, dtype=torch.long)), {}, ValueError, "at least one anchor"),
    ((torch.randn(3, 4), torch.tensor([0, 1])), {}, ValueError, r"labels must have shape \[3\]"),
    ((torch.randn(3, 4), torch.tensor([0.0, 1.0, 1.0])), {}, ValueError, "integer"),
    ((torch.randn(3, 4), torch.tensor([0, 1, 1])), dict(temperature=0.0), ValueError, "temperature"),
    ((torch.randn(3, 4), torch.tensor([0, 1, 1]), torch.randn(5, 3), torch.zeros(5, dtype=torch.long)), {},
     ValueError, r"contrast must be \[M, 4\]"),
    ((torch.randn(3, 4), torch.tensor([0, 1, 1]), torch.randn(5, 4)), {}, ValueError, "contrast_labels"),
    ((torch.randn(3, 4), torch.tensor([0, 1, 1]), None, torch.tensor([0, 1, 1, 2])), {}, ValueError,
     "contrast_labels needs contrast"),
    ((torch.randn(3, 4), torch.tensor([0, 1, 1])), dict(self_index=torch.arange(3)), ValueError,
     "self_index needs a separate contrast"),
    ((torch.randn(3, 4), torch.tensor([0, 1, 1]), None, None, -0.5), {}, ValueError, "temperature"),
    ((torch.randn(3, 4), torch.tensor([0, 1, 1]), torch.randn(5, 4), torch.tensor([0, 1, 1, 2, 2])),
     dict(self_index=torch.tensor([0, 1])), ValueError, r"self_index must be an integer tensor \[3\]"),
    ((torch.randn(3, 4), torch.tensor([0, 1, 1]), torch.randn(5, 4), torch.tensor([0, 1, 1, 2, 2])),
     dict(self_index=torch.tensor([0, 1, 5])), ValueError, r"rows of contrast in \[0, 5\) or -1"),
    ((torch.randn(3, 4), torch.tensor([0, 1, 1]), torch.randn(5, 4), torch.tensor([0, 1, 1, 2, 2])),
     dict(self_index=torch.tensor([0, 1, 3])), ValueError, "point at each anchor's own row"),
])
def test_bad_loss_inputs_are_rejected(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        pixel_contrast(*args, **kwargs)


def test_contrast_that_is_the_anchors_needs_their_labels():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="contrast is anchors, so contrast_labels must equal anchor_labels"):
        pixel_contrast(x, torch.tensor([0, 1, 1]), x, torch.tensor([0, 1, 2]))


# --------------------------------------------------------------------------- the segmenter


def test_the_segmenter_gives_full_size_logits_and_unit_embeddings_at_half_size():
    net = SmallSegmenter(3, 5, width=4, embedding_dim=6)
    out = net(torch.rand(2, 3, 15, 18))
    assert isinstance(out, SegmenterOutput)
    assert out.logits.shape == (2, 5, 15, 18) and out.embeddings.shape == (2, 6, 8, 9)
    torch.testing.assert_close(out.embeddings.norm(dim=1), torch.ones(2, 8, 9))
    # channels-last weights and input compute the same thing
    x = torch.rand(2, 3, 16, 16)
    net.eval()
    expected = net(x)
    net.to(memory_format=torch.channels_last)
    out = net(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        SmallSegmenter(3, 1)
    with pytest.raises(ValueError, match=r"images \[B, 3, H, W\]"):
        net(torch.rand(2, 1, 16, 16))


# --------------------------------------------------------------------------- memories


def marked(rows, labels):
    """Embeddings [B, E, 1, n] whose pixel j of image b is rows[b][j], with the given labels [B, 1, n]."""
    return torch.stack(rows).permute(0, 2, 1).unsqueeze(2), torch.tensor(labels).unsqueeze(1)


def test_each_class_memory_is_a_fifo_queue_with_wrap_around():
    model = make_model(pixel_memory_size=4, region_memory_size=4, pixels_per_image=1)
    seen = [F.normalize(torch.randn(8), dim=0) for _ in range(6)]
    for step in range(6):  # one class-1 pixel per step, the rest background: 6 entries through 4 slots
        emb, labels = marked([torch.stack([seen[step], torch.ones(8)])], [[1, 0]])
        model.enqueue(emb, labels)
    for name in ("pixel", "region"):
        memory, ptr, filled = (getattr(model, f"{name}_{part}") for part in ("memory", "ptr", "filled"))
        assert ptr.tolist() == [6 % 4, 6 % 4, 0] and filled.tolist() == [4, 4, 0], name
        torch.testing.assert_close(torch.roll(memory[1], -int(ptr[1]), dims=0), torch.stack(seen[2:]))
        assert torch.equal(memory[2], torch.zeros(4, 8))
    # a batch of more entries than slots leaves its last ones, in image order
    images = [F.normalize(torch.randn(8), dim=0) for _ in range(5)]
    emb, labels = marked([torch.stack([v, -v]) for v in images], [[1, 2]] * 5)
    model.enqueue(emb, labels)
    assert model.region_ptr.tolist() == [2, (2 + 5) % 4, 5 % 4]
    torch.testing.assert_close(torch.roll(model.region_memory[1], -int(model.region_ptr[1]), dims=0),
                               torch.stack(images[1:]))
    torch.testing.assert_close(torch.roll(model.pixel_memory[2], -int(model.pixel_ptr[2]), dims=0),
                               -torch.stack(images[1:]))
    memory, labels = model.memory()  # filled slots, class by class, pixel memory first
    assert memory.shape == (24, 8) and labels.tolist() == ([0] * 4 + [1] * 4 + [2] * 4) * 2


def test_regions_are_normalised_means_and_pixels_a_random_few_of_each_image_and_class():
    model = make_model(pixel_memory_size=20, region_memory_size=5, pixels_per_image=3)
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(2, 8, 4, 4, generator=g), dim=1)
    labels = torch.tensor([[0] * 10 + [1] * 2 + [255] * 4, [2] * 8 + [255] * 8]).reshape(2, 4, 4)
    flat = emb.permute(0, 2, 3, 1).reshape(2, 16, 8)
    model.enqueue(emb, labels)
    assert model.region_filled.tolist() == [1, 1, 1] and model.pixel_filled.tolist() == [3, 2, 3]
    for cls, (image, pixels) in enumerate([(0, range(10)), (0, range(10, 12)), (1, range(8))]):
        torch.testing.assert_close(model.region_memory[cls, 0], F.normalize(flat[image, list(pixels)].mean(0), dim=0))
        for row in model.pixel_memory[cls, : int(model.pixel_filled[cls])]:
            assert any(torch.equal(row, flat[image, p]) for p in pixels), cls  # a pixel of this image and class
    # no entry ever comes from an ignored pixel
    ignored = torch.cat([flat[0, 12:], flat[1, 8:]])
    stored = torch.cat([model.pixel_memory.reshape(-1, 8), model.region_memory.reshape(-1, 8)])
    assert not any(torch.allclose(row, s) for row in ignored for s in stored)


# --------------------------------------------------------------------------- anchors


def test_hard_anchors_come_first_from_the_mispredicted_pixels():
    model = make_model(anchors_per_class=4, hard_fraction=0.5)
    labels = torch.tensor([0] * 10 + [1] * 6 + [2] * 2 + [255] * 5)
    wrong = torch.zeros(23, dtype=torch.bool)
    wrong[[1, 4, 7]] = True  # 3 hard pixels of class 0
    wrong[12] = True  # 1 of class 1
    wrong[18:] = True  # ignored pixels, "wrong" too: never anchors
    for _ in range(20):
        index = model.sample_anchors(labels, wrong)
        assert labels[index].tolist() == [0] * 4 + [1] * 4 + [2] * 2  # class by class, min(4, pixels) each
        assert set(index[:2].tolist()) <= {1, 4, 7}  # floor(0.5 * 4) = 2 hard ones first
        assert index[4].item() == 12 and not wrong[index[5:8]].any()  # class 1 has one hard pixel: the rest random
        assert len(set(index.tolist())) == 10
    model.hard_fraction = 1.0
    index = model.sample_anchors(labels, wrong)
    assert set(index[:3].tolist()) == {1, 4, 7} and not wrong[index[3]]  # all 3 hard, then 1 other
    # hard_fraction = 0: plain random sampling, about 3 / 10 of class 0's anchors are hard
    model.hard_fraction, model.anchors_per_class = 0.0, 2
    share = sum(wrong[model.sample_anchors(labels, wrong)[:2]].sum().item() for _ in range(300)) / 600
    assert 0.22 < share < 0.38
    assert model.sample_anchors(torch.full((5,), 255), torch.ones(5, dtype=torch.bool)).numel() == 0


def test_nearest_labels_keep_class_ids():
    masks = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 2, 2], [255, 255, 2, 2]]])
    assert nearest_labels(masks, (2, 2)).tolist() == [[[0, 1], [255, 2]]]
    assert nearest_labels(masks, (4, 4)) is masks


# --------------------------------------------------------------------------- the training step


def test_the_warm_up_is_exactly_cross_entropy_and_the_memories_fill_meanwhile():
    model = make_model(warmup_steps=2)
    for step in range(3):
        images, masks = scenes(seed=step)
        ce = F.cross_entropy(model.encoder(images).logits, masks, ignore_index=255)  # same batch statistics
        model.zero_grad()
        loss = model.training_step((images, masks))
        loss.backward()
        projection = [p.grad for p in model.encoder.projection.parameters()]
        if step < 2:
            assert torch.equal(loss, ce) and model.last_contrast is None
            assert all(g is None for g in projection)  # the head gets nothing from cross-entropy
            assert model.pixel_filled.sum() > 0
        else:
            assert model.last_contrast is not None and model.last_contrast > 0
            torch.testing.assert_close(loss, ce + 0.1 * model.last_contrast)
            assert all(g is not None and g.abs().sum() > 0 for g in projection)
    assert model.steps_done.item() == 3


def test_weight_zero_is_cross_entropy_alone_without_memories():
    model = make_model(contrast_weight=0.0, warmup_steps=1)
    for step in range(3):
        images, masks = scenes(seed=step)
        ce = F.cross_entropy(model.encoder(images).logits, masks, ignore_index=255)
        model.zero_grad()
        loss = model.training_step((images, masks))
        loss.backward()
        assert torch.equal(loss, ce) and model.last_contrast is None
        assert all(p.grad is None for p in model.encoder.projection.parameters())
    assert model.pixel_filled.sum() == 0 and model.region_filled.sum() == 0  # nothing reads them


@pytest.mark.parametrize("memory", [True, False])
def test_the_step_is_cross_entropy_plus_eq3_against_the_anchors_and_the_memory_before_the_step(memory):
    sizes = dict(pixel_memory_size=6, region_memory_size=3) if memory else dict(pixel_memory_size=0,
                                                                              region_memory_size=0)
    model = make_model(contrast_weight=0.5, **sizes)
    model.training_step(scenes(seed=0))  # something in the memories
    images, masks = scenes(seed=1)
    logits, emb = model.encoder(images)
    labels = nearest_labels(masks, (4, 4)).reshape(-1)
    predicted = nearest_labels(logits.argmax(1), (4, 4)).reshape(-1)
    state = model.generator.get_state()
    index = model.sample_anchors(labels, predicted != labels)
    model.generator.set_state(state)  # the step draws the same anchors
    anchors = emb.permute(0, 2, 3, 1).reshape(-1, 8)[index].detach()
    memory_rows, memory_labels = model.memory()
    assert (memory_rows.shape[0] > 0) == memory
    contrast = torch.cat([anchors, memory_rows])
    contrast_labels = torch.cat([labels[index], memory_labels])
    expected = loop_loss(anchors, labels[index], contrast, contrast_labels, 0.1, torch.arange(len(index)))
    ce = F.cross_entropy(logits, masks, ignore_index=255)
    loss = model.training_step((images, masks))
    torch.testing.assert_close(model.last_contrast.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, ce + 0.5 * model.last_contrast)
    assert not (labels[index] == 255).any()


def test_ignored_pixels_are_never_anchors_nor_memory_entries():
    model = make_model(pixel_memory_size=200, region_memory_size=20, pixels_per_image=100, anchors_per_class=100)
    images, masks = scenes(b=3, seed=4)
    masks[:, :, 4:] = 255  # the right half unlabelled
    model.training_step((images, masks))
    labels = nearest_labels(masks, (4, 4))
    counts = torch.stack([(labels == c).sum() for c in range(3)])
    assert model.pixel_filled.tolist() == counts.tolist()  # every labelled pixel, not one ignored
    assert model.region_filled.tolist() == [(labels == c).flatten(1).any(1).sum().item() for c in range(3)]
    with torch.no_grad():
        emb = model.encoder(images).embeddings.permute(0, 2, 3, 1)
    ignored = emb[labels == 255]
    assert not any(torch.allclose(row, s, atol=1e-6) for row in ignored for s in model.pixel_memory.reshape(-1, 8))


def test_resumed_training_equals_an_uninterrupted_run(tmp_path):
    batches = [scenes(seed=s) for s in range(6)]

    def train(model, optimizer, steps):
        losses = []
        for batch in steps:
            optimizer.zero_grad()
            loss = model.training_step(batch)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    def fresh(seed):
        model = make_model(warmup_steps=4, generator=torch.Generator().manual_seed(seed))
        return model, torch.optim.Adam(model.parameters(), lr=1e-2)

    straight, straight_opt = fresh(1)
    full = train(straight, straight_opt, batches)
    first, first_opt = fresh(1)
    head = train(first, first_opt, batches[:3])
    torch.save({"method": first.state_dict(), "optimizer": first_opt.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed, resumed_opt = fresh(99)  # another seed: the generator's state comes from the checkpoint
    resumed.load_state_dict(state["method"])
    resumed_opt.load_state_dict(state["optimizer"])
    tail = train(resumed, resumed_opt, batches[3:])  # crosses the end of the warm-up at step 4
    assert head + tail == full
    assert straight.pixel_filled.min() == 6 and straight.steps_done.item() == 6
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_few_dozen_steps_learn_a_two_class_task():
    g = torch.Generator().manual_seed(0)

    def squares(n):
        images, masks = 0.3 * torch.rand(n, 1, 16, 16, generator=g), torch.zeros(n, 16, 16, dtype=torch.long)
        for i in range(n):
            y, x = torch.randint(0, 9, (2,), generator=g).tolist()
            images[i, 0, y:y + 7, x:x + 7] += 0.5
            masks[i, y:y + 7, x:x + 7] = 1
        return images, masks

    torch.manual_seed(0)
    model = PixelContrast(SmallSegmenter(1, 2, width=8, embedding_dim=16), 2, anchors_per_class=32,
                          pixel_memory_size=64, region_memory_size=16, generator=torch.Generator().manual_seed(0))
    assert isinstance(model, Method)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ce, contrast = [], []
    for _ in range(40):
        optimizer.zero_grad()
        model.training_step(squares(16)).backward()
        optimizer.step()
        ce.append(model.last_ce.item())
        contrast.append(model.last_contrast.item())
    assert sum(ce[-5:]) < 0.3 * sum(ce[:5]) and sum(contrast[-5:]) < 0.3 * sum(contrast[:5]), (ce, contrast)
    model.eval()
    images, masks = squares(32)
    with torch.no_grad():
        accuracy = (model.encoder(images).logits.argmax(1) == masks).float().mean()
    assert accuracy > 0.9


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-0.1), "temperature"),
    (dict(num_classes=4), r"num_classes \(4\) must match the segmenter's num_classes \(3\)"),
    (dict(contrast_weight=-1.0), "contrast_weight"),
    (dict(anchors_per_class=0), "anchors_per_class must be an int >= 1"),
    (dict(hard_fraction=1.5), "hard_fraction"),
    (dict(pixel_memory_size=-1), "pixel_memory_size must be an int >= 0"),
    (dict(region_memory_size=2.5), "region_memory_size"),
    (dict(pixels_per_image=0), "pixels_per_image"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(ignore_index=1), "ignore_index must be an int outside the classes"),
    (dict(gather_distributed=True), "does not gather across processes"),
])
def test_bad_settings_are_rejected(kwargs, message):
    num_classes = kwargs.pop("num_classes", 3)
    with pytest.raises((ValueError, TypeError), match=message):
        PixelContrast(SmallSegmenter(1, 3, width=4, embedding_dim=8), num_classes, **kwargs)


def test_a_segmenter_without_embedding_dim_is_rejected():
    with pytest.raises(ValueError, match="embedding_dim"):
        PixelContrast(torch.nn.Conv2d(1, 3, 1), 3)


def test_bad_batches_are_rejected():
    model = make_model()
    images, masks = scenes()
    with pytest.raises(ValueError, match=r"masks int64 \[B, H, W\] = \[4, 8, 8\].*got torch.int64 \[4, 8, 7\]"):
        model.training_step((images, masks[..., :7]))
    with pytest.raises(ValueError, match=r"masks int64.*got torch.int32"):
        model.training_step((images, masks.int()))
    with pytest.raises(ValueError, match=r"masks int64.*got torch.float32"):
        model.training_step((images, masks.float()))
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 3\) or be 255"):
        model.training_step((images, torch.where(masks == 2, 3, masks)))
    with pytest.raises(ValueError, match="every pixel of the batch is ignore_index"):
        model.training_step((images, torch.full_like(masks, 255)))
    with pytest.raises(ValueError, match=r"a batch \(images, masks\)"):
        model.training_step((images, masks, masks))
    assert model.steps_done.item() == 0 and model.pixel_filled.sum() == 0  # nothing changed
