import dataclasses
import itertools

import pytest
import torch
from torch import nn

from clcourse.data import (
    IGNORE_INDEX,
    DatasetNotFoundError,
    DenseData,
    DenseLoader,
    shard_rows,
)
from clcourse.device import torch_threads
from clcourse.distributed import DistributedMethod
from clcourse.encoders import SmallSegmenter
from clcourse.methods import NNCLR, PCL, PCRL, MoCo, PixelContrast, SimCLR, SupCon
from clcourse.recipes import (
    DATASETS,
    DENSE_DATASET,
    DENSE_METHODS,
    IMAGE_METHODS,
    METHODS,
    NONCONTRASTIVE_METHODS,
    SOURCES,
    Recipe,
    build,
    build_method,
    build_optimizer,
    fit_options,
    get_recipe,
)
from clcourse.runs import images_per_second
from clcourse.train import Budget
from clcourse.unet import UNetEncoder


@pytest.mark.parametrize("method, profile, dataset", list(itertools.product(METHODS, ("quick", "full"), DATASETS)))
def test_every_recipe_is_complete_or_refused_clearly(method, profile, dataset):
    if method in DENSE_METHODS and dataset != DENSE_DATASET[method]:
        with pytest.raises(ValueError, match=f"{method} is a dense method: it trains on {DENSE_DATASET[method]}"):
            get_recipe(method, profile, "folder:/some/pictures" if dataset == "folder" else dataset)
        return
    if method in IMAGE_METHODS and dataset in ("scenes", "lesions"):
        with pytest.raises(ValueError, match=f"{dataset} is a segmentation dataset.*{method} learns image"):
            get_recipe(method, profile, dataset)
        return
    if method == "sscl" and dataset != "reviews":
        with pytest.raises(ValueError, match=f"sscl detects the aspects of sentences.*not {dataset}; use --dataset "
                                             "reviews"):
            get_recipe(method, profile, "folder:/some/pictures" if dataset == "folder" else dataset)
        return
    if method in IMAGE_METHODS and dataset == "reviews":
        with pytest.raises(ValueError, match=f"reviews holds sentences, not images: only sscl.*{method} trains on"):
            get_recipe(method, profile, dataset)
        return
    if profile == "quick" and dataset == "stl10":
        with pytest.raises(ValueError, match="full profile only"):
            get_recipe(method, profile, dataset)
        return
    name = "folder:/some/pictures" if dataset == "folder" else dataset
    recipe = get_recipe(method, profile, name)
    assert (recipe.method, recipe.profile, recipe.dataset) == (method, profile, dataset)
    assert recipe.data_path == ("/some/pictures" if dataset == "folder" else None)
    assert isinstance(recipe.budget, Budget) and sum(v is not None for v in recipe.budget.as_dict().values()) == 1
    assert Recipe.from_dict(recipe.as_dict()) == recipe
    assert set(recipe.sources) <= set(SOURCES) and recipe.sources
    assert recipe.as_dict()["sources"].keys() == set(recipe.sources)
    assert "batch" in recipe.summary()


def test_the_full_cifar10_recipes_follow_their_references():
    simclr, moco, supcon, swav, nnclr, pcl = (get_recipe(m, "full", "cifar10")
                                              for m in ("simclr", "moco", "supcon", "swav", "nnclr", "pcl"))
    for r in (simclr, moco, supcon, swav, nnclr, pcl):
        assert (r.encoder, r.batch_size, r.epochs, r.optimizer) == ("resnet18_cifar", 512, 200, "sgd")
        assert r.schedule == "cosine"
        assert (r.knn_k, r.knn_temperature) == (200, 0.1)
    assert simclr.lr == pytest.approx(0.24) and simclr.weight_decay == 5e-4 and simclr.temperature == 0.5
    assert moco.lr == 0.06 and moco.temperature == 0.1 and moco.head_layers == 1
    assert moco.method_options == dict(queue_size=4096, momentum=0.99, shuffle_bn_groups=8, symmetric=False)
    assert supcon.lr == pytest.approx(0.25) and supcon.temperature == 0.1 and supcon.weight_decay == 1e-4
    assert swav.lr == pytest.approx(0.24) and swav.temperature == 0.1 and swav.augment_options["crop_scale"] == (0.14, 1)
    assert swav.method_options["num_prototypes"] == 512 and swav.method_options["epsilon"] == 0.05
    assert nnclr.lr == pytest.approx(0.24) and nnclr.weight_decay == 5e-4 and nnclr.temperature == 0.5
    assert (nnclr.projection_dim, nnclr.hidden_dim, nnclr.head_layers) == (256, 2048, 2)
    assert nnclr.method_options == dict(support_size=8192, prediction_hidden_dim=4096)
    # PCL: the MoCo recipe plus the prototypes
    assert (pcl.lr, pcl.weight_decay, pcl.temperature, pcl.head_layers) == (moco.lr, moco.weight_decay, 0.1, 1)
    assert pcl.method_options == dict(moco.method_options, num_clusters=(500, 1000, 2000), warmup_epochs=20)
    # Expectations are stated with "about" and their source, or say that there is none.
    assert "about" in simclr.expected and "LightlySSL" in simclr.expected
    assert "about" in moco.expected and "MOCO-DEMO" in moco.expected
    assert "no published" in supcon.expected and "96.0%" in supcon.expected
    assert "about 0.84" in swav.expected and "LightlySSL" in swav.expected
    assert "about 0.82" in nnclr.expected and "0.815 / 0.892" in nnclr.expected and "LightlySSL" in nnclr.expected
    assert set(nnclr.sources) == {"LIGHTLY", "NNCLR"} and "eq. 3" in nnclr.notes
    assert "no published reference at this scale" in pcl.expected and "not measured" in pcl.expected
    assert "61.5% (PCL v1) and 67.6% (PCL v2" in pcl.expected and "ImageNet figures" in pcl.expected
    assert set(pcl.sources) == {"PCL", "MOCO-DEMO"} and "our choice" in pcl.notes


def test_the_noncontrastive_recipes_build_their_methods_without_a_temperature():
    from clcourse.methods import BYOL, BarlowTwins, SimSiam

    for name, cls in (("byol", BYOL), ("simsiam", SimSiam), ("barlow-twins", BarlowTwins)):
        quick, full = get_recipe(name, "quick", "digits"), get_recipe(name, "full", "cifar10")
        assert "temperature" not in quick.summary() and "temperature" in get_recipe("simclr", "quick").summary()
        torch.manual_seed(0)
        method = build_method(quick)
        assert type(method) is cls and method.gather_distributed is False
        assert build_method(quick, gather_distributed=True).gather_distributed is True
        assert (quick.batch_size, quick.lr, quick.weight_decay) == (256, 3e-3, 1e-4)  # SimCLR's quick settings
        assert (full.encoder, full.batch_size, full.epochs) == ("resnet18_cifar", 512, 200)
        assert full.lr == pytest.approx(0.24)
        assert "about" in full.expected and "LightlySSL" in full.expected and "LIGHTLY" in full.sources
    byol, simsiam, barlow = (build_method(get_recipe(n, "quick", "digits")) for n in NONCONTRASTIVE_METHODS)
    assert byol.momentum == 0.99 and byol.predictor.out_dim == byol.projector.out_dim == 128
    assert simsiam.stop_gradient and simsiam.predictor.net[0].out_features == 64  # the bottleneck: 128 / 2
    assert isinstance(simsiam.projector.net[-1], nn.BatchNorm1d)  # SimSiam's projector ends in batch norm
    rest, predictor = build_optimizer(get_recipe("simsiam", "quick", "digits"), simsiam).param_groups
    assert predictor["fixed_lr"] and predictor["params"] == list(simsiam.predictor.parameters())
    assert not rest.get("fixed_lr")
    assert len(rest["params"]) + len(predictor["params"]) == len(list(simsiam.parameters()))
    assert barlow.projector.out_dim == 256 and len([m for m in barlow.projector.net if isinstance(m, nn.Linear)]) == 3
    assert "about 0.868 after 200 epochs and about 0.910 after 800" in get_recipe("byol", "full", "cifar10").expected
    assert get_recipe("simsiam", "full", "cifar10").method_options == dict(predictor_hidden_dim=64)


def test_default_dataset_and_auto_profile(monkeypatch):
    monkeypatch.setenv("CLCOURSE_PROFILE", "quick")
    assert get_recipe("simclr").dataset == "digits"
    assert get_recipe("simclr", "auto").profile == "quick"
    assert get_recipe("moco", "full").dataset == "cifar10"
    with pytest.raises(ValueError, match="method must be one of"):
        get_recipe("dino")
    with pytest.raises(ValueError, match="dataset must be one of"):
        get_recipe("simclr", "quick", "mnist")


def test_override_rescales_sgd_learning_rates_and_replaces_the_budget():
    full = get_recipe("simclr", "full", "cifar10")
    assert full.override(batch_size=256).lr == pytest.approx(full.lr / 2)  # linear scaling rule
    assert full.override(batch_size=256, lr=0.1).lr == 0.1  # an explicit lr wins
    quick = get_recipe("simclr", "quick", "digits")
    assert quick.override(batch_size=64).lr == quick.lr  # Adam: no scaling
    short = quick.override(steps=5, seconds=None, temperature=None)
    assert short.budget == Budget("steps", 5) and (short.epochs, short.seconds) == (None, None)
    assert short.temperature == quick.temperature
    assert fit_options(short) == dict(budget=Budget("steps", 5), schedule="cosine", warmup=0.05, channels_last=True)
    with pytest.raises(ValueError, match="unknown recipe fields"):
        quick.override(learning_rate=1.0)
    with pytest.raises(ValueError, match="steps must be > 0"):
        quick.override(steps=0)


def test_build_is_reproducible_and_matches_the_recipe():
    recipe = get_recipe("simclr", "quick", "digits").override(batch_size=32)
    method, loader, eval_train, eval_test = build(recipe, "cpu")
    again, loader2, _, _ = build(recipe, "cpu")
    assert isinstance(method, SimCLR) and method.temperature == recipe.temperature
    assert not method.gather_distributed  # one process
    assert (len(eval_train), len(eval_test)) == (1257, 540)
    views, labels = next(iter(loader))
    assert len(views) == 2 and views[0].shape == (32, 1, 8, 8) and labels.shape == (32,)
    assert all(torch.equal(a, b) for a, b in zip(method.state_dict().values(), again.state_dict().values()))
    assert torch.equal(next(iter(loader2))[0][1], views[1])


@pytest.mark.parametrize("world", [2, 4])
def test_process_shares_are_the_rows_of_the_one_process_batch(world):
    recipe = get_recipe("supcon", "quick", "digits").override(batch_size=16)
    _, loader, _, _ = build(recipe, "cpu")
    views, labels = next(iter(loader))
    for rank in range(world):
        _, shard_loader, _, _ = build(recipe, "cpu", rank=rank, world_size=world)
        shard_views, shard_labels = next(iter(shard_loader))
        rows = shard_rows(16, rank, world)
        assert torch.equal(shard_labels, labels[rows])
        for full_view, shard_view in zip(views, shard_views):
            assert torch.allclose(shard_view, full_view[rows], atol=1e-6)
    assert len(shard_loader) == len(loader)


def test_multi_crop_recipes_build_small_views_and_share_them_across_processes():
    recipe = get_recipe("swav", "quick", "shapes").override(batch_size=8, small_views=2, small_size=16)
    method, loader, _, _ = build(recipe, "cpu")
    views, _ = next(iter(loader))
    assert [tuple(v.shape) for v in views] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 2
    assert method.n_large_crops == 2 and torch.isfinite(method.training_step((views, None)))
    shards = [next(iter(build(recipe, "cpu", rank=r, world_size=2)[1]))[0] for r in range(2)]
    for v, view in enumerate(views):
        assert torch.allclose(torch.cat([shard[v] for shard in shards]), view, atol=1e-6)
    with pytest.raises(ValueError, match="small_size"):
        get_recipe("swav", "quick", "digits").override(small_views=2)


def test_the_quick_nnclr_recipe_quotes_its_measurement():
    recipe = get_recipe("nnclr", "quick", "digits")
    assert recipe.temperature == 0.1 and recipe.method_options == dict(support_size=512)
    assert "about 74%" in recipe.expected and "benchmarks/README.md" in recipe.expected
    method, loader, _, _ = build(recipe.override(batch_size=32), "cpu")
    assert isinstance(method, NNCLR) and method.support_set.shape == (512, 128) and method.temperature == 0.1
    views, _ = next(iter(loader))
    assert torch.isfinite(method.training_step((views, None))) and method.support_filled.item() == 32


def test_the_quick_pcl_recipe_trains_on_image_indices_and_states_its_measurement():
    recipe = get_recipe("pcl", "quick", "digits")
    moco = get_recipe("moco", "quick", "digits")
    assert recipe.temperature == moco.temperature == 0.5
    assert recipe.method_options == dict(moco.method_options, num_clusters=(25, 50, 100), warmup_epochs=20)
    assert "about 84%" in recipe.expected and "benchmarks/README.md" in recipe.expected
    method, loader, eval_train, _ = build(recipe.override(batch_size=32), "cpu")
    assert isinstance(method, PCL) and method.num_clusters == (25, 50, 100) and method.warmup_epochs == 20
    assert torch.equal(method.training_images, eval_train.images)  # the E-step clusters the whole training set
    views, index = next(iter(loader))
    assert index.unique().numel() == 32 and 0 <= index.min() and index.max() < len(eval_train)  # indices, not digits
    assert torch.isfinite(method.training_step((views, index))) and not method.clustered
    method.on_epoch_start(20)  # the first E-step, after the 20 warm-up epochs
    assert [c.assignments.shape for c in method.clusterings] == [(1257,)] * 3
    assert torch.isfinite(method.training_step((views, index)))


def test_shard_rows_needs_equal_shares():
    assert shard_rows(12, 1, 3) == slice(4, 8)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        shard_rows(10, 0, 3)


def test_methods_and_optimizers_of_the_recipes():
    moco = get_recipe("moco", "quick", "digits")
    method = build_method(moco)
    assert isinstance(method, MoCo) and method.queue.shape[0] == 1024
    optimizer = build_optimizer(moco, method)
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    assert isinstance(optimizer, torch.optim.Adam)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable  # no key encoder
    full = get_recipe("supcon", "full", "cifar10")
    optimizer = build_optimizer(full, build_method(full))
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 1e-4
    assert isinstance(build_method(get_recipe("supcon", "quick", "shapes")), SupCon)
    stl = build_method(get_recipe("simclr", "full", "stl10"))
    assert stl.encoder(torch.rand(2, 3, 96, 96)).shape == (2, 512)


def test_shapes_build_trims_to_the_recipe_sizes():
    recipe = get_recipe("simclr", "quick", "shapes").override(train_size=64, test_size=32, batch_size=32)
    _, loader, eval_train, eval_test = build(recipe, "cpu")
    assert (len(eval_train), len(eval_test)) == (64, 32)
    assert next(iter(loader))[0][0].shape == (32, 3, 32, 32)


def test_missing_cifar10_raises_the_clear_error(tmp_path):
    recipe = get_recipe("simclr", "quick", "cifar10")
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        build(recipe, "cpu", root=tmp_path)


def test_distributed_method_needs_a_process_group():
    method = build_method(get_recipe("simclr", "quick", "digits"), gather_distributed=True)
    assert method.gather_distributed
    with pytest.raises(ValueError, match="process group"):
        DistributedMethod(method, "cpu")


def test_folder_recipes_need_a_path():
    with pytest.raises(ValueError, match="folder:PATH"):
        get_recipe("simclr", "quick", "folder")
    with pytest.raises(ValueError, match="only the folder dataset takes a path"):
        get_recipe("simclr", "quick", "digits:/tmp")


def test_images_per_second():
    recipe = get_recipe("simclr", "quick", "digits")
    assert images_per_second(recipe, steps=10, seconds=5.0) == pytest.approx(10 * 256 * 2 / 5)


# --------------------------------------------------------------------------- the dense methods


@pytest.fixture
def one_thread():
    """Small networks: on a busy 2-core machine a second thread costs more than it saves."""
    with torch_threads(1):
        yield


def test_the_dense_recipes_hold_their_settings_and_default_to_their_dataset():
    pixel, pcrl = get_recipe("pixel-contrast", "quick"), get_recipe("pcrl", "quick")
    assert (pixel.dataset, pixel.image_size, pixel.in_channels, pixel.train_size, pixel.test_size) == (
        "scenes", 32, 3, 2000, 500)
    assert (pixel.encoder, pixel.encoder_width, pixel.batch_size, pixel.optimizer, pixel.lr) == (
        "small_segmenter", 32, 32, "adam", 2e-3)
    assert (pixel.weight_decay, pixel.schedule, pixel.budget, pixel.temperature) == (
        1e-4, "cosine", Budget("steps", 600), 0.1)
    assert pixel.method_options == dict(warmup_steps=300)
    assert pixel.evaluation == "segmentation" and pixel.evaluation_options() == {}
    assert (pcrl.dataset, pcrl.image_size, pcrl.in_channels, pcrl.train_size, pcrl.test_size) == (
        "lesions", 64, 1, 2000, 500)
    assert (pcrl.batch_size, pcrl.lr, pcrl.budget, pcrl.temperature, pcrl.augment) == (
        32, 1e-3, Budget("steps", 600), 0.2, "pcrl")
    assert pcrl.evaluation == "finetune-segmentation" and pcrl.finetune_size == 200
    assert pcrl.evaluation_options() == dict(steps=300, lr=1e-3, batch_size=32, class_weights=(1.0, 10.0), seed=0)
    for recipe in (get_recipe("pixel-contrast", "full"), get_recipe("pcrl", "full")):
        assert "not measured yet" in recipe.expected and "benchmarks/README.md" in recipe.expected
    for recipe in (pixel, pcrl):
        assert "bench_dense_recipes.py" in recipe.expected and "benchmarks/README.md" in recipe.expected
    full_pixel, full_pcrl = get_recipe("pixel-contrast", "full"), get_recipe("pcrl", "full")
    assert (full_pixel.image_size, full_pixel.train_size) == (64, 20000) and full_pixel.steps > pixel.steps
    assert full_pcrl.train_size == 20000 and full_pcrl.steps > pcrl.steps
    assert "unmeasured" in full_pixel.notes and "unmeasured" in full_pcrl.notes
    assert "fine-tune 300 steps on 200 labelled images" in pcrl.summary()
    assert pixel.views_per_image == 1 and pcrl.views_per_image == 2


def test_pixel_contrast_builds_a_segmenter_and_a_loader_of_augmented_images_and_masks(one_thread):
    recipe = get_recipe("pixel-contrast", "quick").override(train_size=48, test_size=8, batch_size=16)
    method, loader, eval_train, eval_test = build(recipe, "cpu")
    assert isinstance(method, PixelContrast) and isinstance(method.encoder, SmallSegmenter)
    assert (method.num_classes, method.temperature, method.gather_distributed) == (7, 0.1, False)
    assert isinstance(loader, DenseLoader) and len(loader) == 3
    images, masks = next(iter(loader))
    assert images.shape == (16, 3, 32, 32) and masks.shape == (16, 32, 32) and masks.dtype == torch.long
    assert not torch.equal(images, eval_train.images[:16])  # augmented (and shuffled)
    assert isinstance(eval_test, DenseData) and (len(eval_train), len(eval_test)) == (48, 8)
    assert torch.isfinite(method.training_step((images, masks)))
    again = build(recipe, "cpu")
    assert torch.equal(next(iter(again[1]))[1], masks)  # the same seed, the same batches


def test_pcrl_pre_trains_on_unlabelled_slices_and_fine_tunes_on_labelled_ones(one_thread):
    recipe = get_recipe("pcrl", "quick").override(image_size=32, train_size=32, test_size=8, finetune_size=8,
                                                   batch_size=16)
    method, loader, labelled, test = build(recipe, "cpu")
    assert isinstance(method, PCRL) and isinstance(method.encoder, UNetEncoder)
    assert method.encoder.widths == (8, 16, 32, 64) and method.temperature == 0.2
    assert method.augment.size == 32  # PCRL draws its 32-pixel views itself...
    assert loader.augment is None  # ...so its loader passes the slices on as they are
    images, masks = next(iter(loader))
    assert images.shape == (16, 1, 32, 32) and bool((masks == IGNORE_INDEX).all())  # no label reaches pre-training
    assert (len(labelled), len(test)) == (8, 8) and int(labelled.masks.max()) == 1  # the fine-tuning set is labelled
    assert labelled.class_names == ("background", "lesion")
    assert torch.isfinite(method.training_step((images, masks)))


def test_dense_methods_train_on_one_process_and_on_their_own_data():
    with pytest.raises(ValueError, match="pixel-contrast trains on one process only"):
        build(get_recipe("pixel-contrast", "quick"), "cpu", rank=0, world_size=2)
    with pytest.raises(ValueError, match="does not gather across processes"):
        build_method(get_recipe("pixel-contrast", "quick"), gather_distributed=True)
    with pytest.raises(ValueError, match="use --dataset scenes"):
        get_recipe("pixel-contrast", "quick", "digits")
    with pytest.raises(ValueError, match="lesions is a segmentation dataset.*trained on by pcrl"):
        get_recipe("simclr", "quick").override(dataset="lesions")
    with pytest.raises(ValueError, match="train_size must be a positive int for scenes"):
        get_recipe("pixel-contrast", "quick").override(train_size=0)
    with pytest.raises(ValueError, match="finetune_steps must be a positive int"):
        dataclasses.replace(get_recipe("pcrl", "quick"), finetune_steps=None)


def test_the_sscl_recipes_quick_as_measured_full_as_the_authors_code():
    quick, full = get_recipe("sscl", "quick"), get_recipe("sscl", "full")
    assert (quick.dataset, quick.evaluation, quick.views_per_image) == ("reviews", "aspects", 1)
    assert (quick.steps, quick.batch_size, quick.lr, quick.schedule) == (300, 64, 3e-3, "constant")
    assert quick.method_options == dict(num_aspects=12, smooth=2.0) and "about 73%" in quick.expected
    assert (full.batch_size, full.lr, full.method_options["smooth"]) == (50, 2e-4, 0.5)  # [SSCL]'s code
    assert "not measured" in full.expected
    assert "2400 training sentences, word vectors (dim 24)" in quick.summary()
