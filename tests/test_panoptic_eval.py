"""Panoptic output wired through the detector and the evaluation (issue 25), on tiny COCO panoptic
fixtures written here: detection JSON, images, panoptic JSON and PNGs."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import sfpn
from sfpn.data.coco import AnnotationError, CocoDetection
from sfpn.data.panoptic import PanopticGroundTruth, panoptic_label_space, write_segment_ids
from sfpn.data.transforms import build_transforms
from sfpn.engine.evaluation import PANOPTIC_METRIC_NAMES, evaluate, format_metrics
from sfpn.engine.panoptic_quality import PanopticQuality
from sfpn.modeling.postprocess import panoptic_at_original_size

HEIGHT, WIDTH = 40, 56
#: Detection categories (things) by COCO id; the panoptic file adds the stuff category 20.
THINGS = {3: "box", 7: "disc"}
STUFF = 20


def _instances(generator):
    """Per image: non-overlapping thing rectangles ``(category id, x1, y1, x2, y2)``, integer pixels."""
    images = []
    for _ in range(3):
        count = int(torch.randint(1, 4, (), generator=generator))
        rectangles = []
        for slot in range(count):  # one column band each, so they never overlap
            x1 = slot * 18 + int(torch.randint(0, 4, (), generator=generator))
            y1 = int(torch.randint(12, 20, (), generator=generator))
            x2 = x1 + int(torch.randint(6, 14, (), generator=generator))
            y2 = y1 + int(torch.randint(6, 18, (), generator=generator))
            category = list(THINGS)[int(torch.randint(0, 2, (), generator=generator))]
            rectangles.append((category, x1, y1, x2, min(y2, HEIGHT)))
        images.append(rectangles)
    return images


@pytest.fixture
def panoptic_data(tmp_path, request):
    """``(image folder, detection JSON, panoptic JSON, instances per image)``; with stuff (the
    default) the top rows of each image are a stuff segment ("sky")."""
    with_stuff = getattr(request, "param", True)
    generator = torch.Generator().manual_seed(25)
    instances = _instances(generator)
    (tmp_path / "images").mkdir()
    (tmp_path / "panoptic").mkdir()
    categories = [{"id": c, "name": n, "isthing": 1} for c, n in THINGS.items()] + [{"id": STUFF, "name": "sky", "isthing": 0}]
    detection = {"images": [], "annotations": [], "categories": [{"id": c, "name": n} for c, n in THINGS.items()]}
    panoptic = {"images": [], "annotations": [], "categories": categories}
    for image_id, rectangles in enumerate(instances, start=1):
        name = f"{image_id:03d}"
        pixels = (torch.rand(HEIGHT, WIDTH, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / "images" / f"{name}.jpg")
        info = {"id": image_id, "file_name": f"{name}.jpg", "height": HEIGHT, "width": WIDTH}
        detection["images"].append(info)
        panoptic["images"].append(info)
        ids = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
        segments = []
        for number, (category, x1, y1, x2, y2) in enumerate(rectangles, start=1):
            segment_id = 100 * image_id + number
            ids[y1:y2, x1:x2] = segment_id
            segments.append({"id": segment_id, "category_id": category, "iscrowd": 0})
            detection["annotations"].append({"id": segment_id, "image_id": image_id, "category_id": category, "iscrowd": 0,
                                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        if with_stuff:
            ids[:8] = 7 * image_id
            segments.append({"id": 7 * image_id, "category_id": STUFF, "iscrowd": 0})
        write_segment_ids(str(tmp_path / "panoptic" / f"{name}.png"), ids)
        panoptic["annotations"].append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": segments})
    for file, content in (("instances.json", detection), ("panoptic.json", panoptic)):
        (tmp_path / file).write_text(json.dumps(content))
    return str(tmp_path / "images"), str(tmp_path / "instances.json"), str(tmp_path / "panoptic.json"), instances


def _dataset(panoptic_data) -> CocoDetection:
    images, instances_json, panoptic_json, _ = panoptic_data
    # test_min_size = the images' height: the model sees them at their original size
    return CocoDetection(images, instances_json, transforms=build_transforms(HEIGHT, 1000), semantic="none",
                         panoptic=PanopticGroundTruth(panoptic_json, panoptic_json.removesuffix(".json")))


def _model(preset="faster_rcnn_r18_sfpn_small", **overrides):
    torch.manual_seed(0)
    return sfpn.build_detector(preset, len(THINGS), **overrides).eval()


def _outputs_from(instances, dataset, drop_last=False, shift=0):
    """Detector outputs that paint the instances: boxes on the rectangles (the last one moved
    ``shift`` pixels right), the semantic map their detector labels; ``drop_last`` leaves the
    last instance of each image out of the detections (its pixels stay in the map)."""
    outputs = []
    for rectangles in instances:
        semantic = torch.zeros(HEIGHT, WIDTH, dtype=torch.int64)
        boxes, labels = [], []
        for number, (category, x1, y1, x2, y2) in enumerate(rectangles):
            label = dataset.category_id_to_label[category]
            semantic[y1:y2, x1:x2] = label
            moved = shift if number == len(rectangles) - 1 else 0
            boxes.append([x1 + moved, y1, x2 + moved, y2])
            labels.append(label)
        keep = len(boxes) - 1 if drop_last and len(boxes) > 1 else len(boxes)
        outputs.append({
            "boxes": torch.tensor(boxes[:keep], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.linspace(0.9, 0.6, keep),
            "labels": torch.tensor(labels[:keep], dtype=torch.int64),
            "semantic": semantic,
            "semantic_logits": torch.zeros(len(THINGS) + 1, -(-HEIGHT // 8), -(-WIDTH // 8)),
        })
    return outputs


def _patch_forward(monkeypatch, model, outputs):
    """The model returns ``outputs`` in order, one per image, as the evaluation asks for them."""
    queue = list(outputs)
    monkeypatch.setattr(model, "forward", lambda images, targets=None: [queue.pop(0) for _ in images])


@pytest.mark.parametrize("preset", ["faster_rcnn_r18_sfpn_small", "mask_rcnn_r18_sfpn_small"])
def test_predict_panoptic_of_a_real_detector_has_consistent_segments(preset):
    """Box-only: instances from the semantic map inside the boxes; Mask R-CNN: from its masks."""
    model = _model(preset, **{"panoptic.score_threshold": 0.0, "panoptic.stuff_min_area": 0})
    categories = [{"id": c, "isthing": 1} for c in THINGS]
    space = panoptic_label_space([0, *THINGS], [0, *THINGS], categories)
    images = [torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(1)), torch.rand(3, 36, 40)]
    model.train()
    results = model.predict_panoptic(images, space)
    assert model.training  # predict_panoptic restores the mode
    for image, (segment_ids, segments) in zip(images, results):
        assert segment_ids.shape == image.shape[-2:] and segment_ids.dtype == torch.int32
        ids = [s["id"] for s in segments]
        assert ids == list(range(1, len(segments) + 1))
        values, counts = torch.unique(segment_ids, return_counts=True)
        areas = {int(v): int(c) for v, c in zip(values, counts) if v != 0}
        assert areas == {s["id"]: s["area"] for s in segments}
        assert all(s["category_id"] in THINGS and s["isthing"] for s in segments)
    # a real (random) detector's map and boxes: at least one instance is claimed somewhere
    assert any(segments for _, segments in results)


def test_predict_panoptic_needs_the_semantic_branch():
    model = sfpn.build_detector("faster_rcnn_r18_fpn_small", 2).eval()
    space = panoptic_label_space([0, 1, 2], [0, 1, 2], [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}])
    with pytest.raises(ValueError, match="semantic map"):
        model.predict_panoptic([torch.rand(3, 32, 32)], space)


def test_label_space_comes_from_the_categories():
    categories = [{"id": 3, "isthing": 1}, {"id": 7, "isthing": 1}, {"id": 20, "isthing": 0}]
    space = panoptic_label_space([0, 3, 7], [0, 3, 7, 20], categories)
    assert space.label_to_semantic == {1: 1, 2: 2}
    assert space.stuff_classes == (3,)
    assert space.semantic_to_category_id == (0, 3, 7, 20)
    with pytest.raises(ValueError, match=r"label_to_category_id: the detector's categories \[20\]"):
        panoptic_label_space([0, 3, 20], [0, 3, 20], categories)  # a detector label on a stuff category
    with pytest.raises(ValueError, match=r"semantic_category_ids: the categories \[9\]"):
        panoptic_label_space([0, 3], [0, 3, 9], categories)


@pytest.mark.parametrize("panoptic_data", [True, False], ids=["with_stuff", "things_only"], indirect=True)
def test_a_perfect_prediction_scores_pq_100_on_the_things(panoptic_data, monkeypatch):
    dataset = _dataset(panoptic_data)
    model = _model()
    _patch_forward(monkeypatch, model, _outputs_from(panoptic_data[3], dataset))
    metrics, _ = evaluate(model, dataset, "cpu", progress=False)
    panoptic = metrics["panoptic"]
    assert set(panoptic) == set(PANOPTIC_METRIC_NAMES)
    assert panoptic["PQ_th"] == 100.0
    with_stuff = dataset.panoptic.data["annotations"][0]["segments_info"][-1]["category_id"] == STUFF
    if with_stuff:
        # The semantic branch has no stuff classes (background and the detector's labels): stuff is missed.
        things = len({category for rectangles in panoptic_data[3] for category, *_ in rectangles})
        assert panoptic["PQ_st"] == 0.0 and panoptic["PQ"] == pytest.approx(100 * things / (things + 1), abs=1e-3)
    else:
        assert panoptic["PQ_st"] is None and panoptic["PQ"] == panoptic["SQ"] == panoptic["RQ"] == 100.0
    assert "panoptic: PQ" in format_metrics(metrics)


def test_evaluation_shares_one_inference_weight_cache_across_its_batches(panoptic_data, monkeypatch):
    """predict() runs every batch inside one InferenceWeightCache (the weights do not change during
    the loop), so that each convolution folds and casts its weights once per evaluation."""
    import sfpn.modeling.layers as layers

    dataset = _dataset(panoptic_data)
    model = _model()
    queue, caches = _outputs_from(panoptic_data[3], dataset), []

    def forward(images, targets=None):
        caches.append(layers._ACTIVE_CACHE.get())
        return [queue.pop(0) for _ in images]

    monkeypatch.setattr(model, "forward", forward)
    evaluate(model, dataset, "cpu", progress=False)
    assert len(caches) == len(dataset) > 1
    assert caches[0] is not None and all(cache is caches[0] for cache in caches)
    assert layers._ACTIVE_CACHE.get() is None  # and none is left active after it


def test_evaluation_writes_the_scores_of_panoptic_quality(panoptic_data, monkeypatch):
    dataset = _dataset(panoptic_data)
    model = _model(**{"panoptic.stuff_min_area": 0})
    outputs = _outputs_from(panoptic_data[3], dataset, drop_last=True, shift=3)
    quality = PanopticQuality(dataset.panoptic.categories)
    space = panoptic_label_space(dataset.label_to_category_id, dataset.label_to_category_id, dataset.panoptic.categories)
    for image_id, output in zip(dataset.image_ids, outputs):
        predicted = panoptic_at_original_size(output, (HEIGHT, WIDTH), (HEIGHT, WIDTH), space, model.config.panoptic)
        quality.update(*predicted, *dataset.panoptic.read(image_id))
    expected = quality.compute()
    _patch_forward(monkeypatch, model, outputs)
    metrics, _ = evaluate(model, dataset, "cpu", progress=False)
    assert metrics["panoptic"] == {name: None if expected[name] is None else round(expected[name], 3) for name in PANOPTIC_METRIC_NAMES}
    assert 0 < metrics["panoptic"]["PQ_th"] < 100  # the dropped and moved instances cost


def test_without_panoptic_ground_truth_nothing_changes(panoptic_data, monkeypatch):
    images, instances_json, _, instances = panoptic_data
    dataset = CocoDetection(images, instances_json, transforms=build_transforms(HEIGHT, 1000), semantic="none")
    assert dataset.panoptic is None
    model = _model()
    _patch_forward(monkeypatch, model, _outputs_from(instances, dataset))
    metrics, _ = evaluate(model, dataset, "cpu", progress=False)
    assert "panoptic" not in metrics and "panoptic" not in format_metrics(metrics)


def test_panoptic_ground_truth_must_cover_the_images(panoptic_data, tmp_path):
    images, instances_json, panoptic_json, _ = panoptic_data
    content = json.loads(open(panoptic_json).read())
    content["annotations"] = content["annotations"][:-1]
    short = tmp_path / "short.json"
    short.write_text(json.dumps(content))
    with pytest.raises(AnnotationError, match=r"no panoptic annotation of the images \[3\]"):
        CocoDetection(images, instances_json, panoptic=PanopticGroundTruth(str(short), panoptic_json.removesuffix(".json")))
    with pytest.raises(FileNotFoundError, match="panoptic PNG folder not found"):
        PanopticGroundTruth(str(short))


def _panoptic_from_instances(ann_file: str, json_file: str) -> None:
    """COCO panoptic ground truth of a COCO instances file: each instance a thing segment (the
    larger ones painted first, so a smaller one on top keeps its pixels), every category a thing."""
    from pycocotools.coco import COCO
    import contextlib
    import io
    import os

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ann_file)
    png_root = json_file.removesuffix(".json")
    os.makedirs(png_root)
    annotations = []
    for image_id, info in coco.imgs.items():
        ids = np.zeros((info["height"], info["width"]), dtype=np.int64)
        instances = sorted(coco.imgToAnns[image_id], key=lambda a: -a["area"])
        for annotation in instances:
            ids[coco.annToMask(annotation) > 0] = annotation["id"]
        present = set(np.unique(ids).tolist())
        segments = [{"id": a["id"], "category_id": a["category_id"], "iscrowd": a["iscrowd"]} for a in instances if a["id"] in present]
        name = os.path.splitext(info["file_name"])[0] + ".png"
        write_segment_ids(os.path.join(png_root, name), ids)
        annotations.append({"image_id": image_id, "file_name": name, "segments_info": segments})
    categories = [{**c, "isthing": 1} for c in coco.dataset["categories"]]
    with open(json_file, "w") as f:
        json.dump({"images": coco.dataset["images"], "annotations": annotations, "categories": categories}, f)


@pytest.mark.usefixtures("single_thread")
def test_training_and_sfpn_eval_report_panoptic_scores(tmp_path, capsys):
    """eval.json, metrics.jsonl, plot.png and ``python -m sfpn.eval`` carry PQ, SQ, RQ when the
    val split has panoptic ground truth (data.panoptic_json)."""
    from sfpn import eval as sfpn_eval, train
    from sfpn.data import ShapesSpec, synthetic_dataset

    splits = synthetic_dataset(ShapesSpec(seed=3, num_train=4, num_val=2), root=str(tmp_path / "data"), progress=False)
    panoptic_json = str(tmp_path / "panoptic_val.json")
    _panoptic_from_instances(splits["val"].ann_file, panoptic_json)
    output = tmp_path / "run"
    metrics = train.main([
        "--data-root", splits["train"].image_root, "--ann-file", splits["train"].ann_file,
        "--val-data-root", splits["val"].image_root, "--val-ann-file", splits["val"].ann_file,
        "--set", "data.min_size=64", "--set", "data.max_size=96", "--set", "data.test_min_size=64", "--set", "data.num_workers=0",
        "--set", f"data.panoptic_json={panoptic_json}", "--set", "panoptic.score_threshold=0", "--set", "log_every=1",
        "--iters", "2", "--batch-size", "2", "--eval-every", "1", "--output-dir", str(output), "--no-progress",
    ])
    assert set(metrics["panoptic"]) == set(PANOPTIC_METRIC_NAMES)
    assert all(v is None or 0 <= v <= 100 for v in metrics["panoptic"].values())
    assert json.load(open(output / "eval.json"))["panoptic"] == metrics["panoptic"]
    evals = [json.loads(line) for line in open(output / "metrics.jsonl") if '"eval"' in line]
    assert [set(r["panoptic"]) for r in evals] == [set(PANOPTIC_METRIC_NAMES)] * 2
    assert (output / "plot.png").stat().st_size > 0
    capsys.readouterr()
    evaluated = sfpn_eval.main([str(output), "--results", str(tmp_path / "results.json"), "--no-progress"])
    assert evaluated["panoptic"] == metrics["panoptic"]
    assert "panoptic: PQ" in capsys.readouterr().out
    other_data = sfpn_eval.main([str(output), "--data-root", splits["val"].image_root, "--ann-file", splits["val"].ann_file,
                                 "--panoptic-json", panoptic_json, "--results", str(tmp_path / "other.json"), "--no-progress"])
    assert other_data["panoptic"] == metrics["panoptic"]
    with pytest.raises(SystemExit, match="--panoptic-dir needs --panoptic-json"):
        sfpn_eval.main([str(output), "--panoptic-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="trained on 'masks'"):  # a things-only branch: label PNGs of things and stuff do not fit
        sfpn_eval.main([str(output), "--data-root", splits["val"].image_root, "--ann-file", splits["val"].ann_file,
                        "--semantic-dir", str(tmp_path)])


@pytest.mark.usefixtures("single_thread")
def test_sfpn_eval_scores_the_semantic_map_on_another_dataset_with_its_label_pngs(tmp_path):
    """A things-and-stuff detector (data.semantic=png) scored on a dataset given by path, with
    --semantic-dir, gets the semantic scores it got on the same images in training; without
    --semantic-dir it gets none (the training's label PNGs are not that dataset's)."""
    from sfpn import eval as sfpn_eval, train
    from sfpn.data import ShapesSpec, synthetic_dataset
    from sfpn.data.synthetic import label_maps_dir

    spec = ShapesSpec(seed=4, num_train=4, num_val=2)
    root = str(tmp_path / "data")
    splits = synthetic_dataset(spec, root=root, progress=False)
    output = tmp_path / "run"
    metrics = train.main([
        "--data-root", splits["train"].image_root, "--ann-file", splits["train"].ann_file,
        "--val-data-root", splits["val"].image_root, "--val-ann-file", splits["val"].ann_file,
        "--set", "data.semantic=png", "--set", f"data.semantic_dir={label_maps_dir(spec, root)}",
        "--set", "data.min_size=64", "--set", "data.max_size=96", "--set", "data.test_min_size=64", "--set", "data.num_workers=0",
        "--iters", "2", "--batch-size", "2", "--output-dir", str(output), "--no-progress",
    ])
    assert metrics["semantic"]["image"]["IoU"].keys() == {"background", *ShapesSpec.categories, *ShapesSpec.stuff_categories}
    other_data = ["--data-root", splits["val"].image_root, "--ann-file", splits["val"].ann_file, "--no-progress",
                  "--results", str(tmp_path / "other.json")]
    scored = sfpn_eval.main([str(output), *other_data, "--semantic-dir", label_maps_dir(spec, root)])
    assert scored["semantic"] == metrics["semantic"]
    assert scored["bbox"] == metrics["bbox"]
    assert sfpn_eval.main([str(output), *other_data])["semantic"] is None
    with pytest.raises(SystemExit, match="--semantic-dir needs --data-root"):
        sfpn_eval.main([str(output), "--semantic-dir", label_maps_dir(spec, root)])
    with pytest.raises(SystemExit, match="--semantic-dir .* is not a folder"):
        sfpn_eval.main([str(output), *other_data, "--semantic-dir", str(tmp_path / "missing")])


def test_a_semantic_branch_with_other_classes_than_the_dataset_is_refused(panoptic_data, monkeypatch):
    dataset = _dataset(panoptic_data)
    model = _model()
    outputs = _outputs_from(panoptic_data[3], dataset)
    for output in outputs:  # a branch that also predicts a class the label space does not know
        output["semantic_logits"] = torch.zeros(len(THINGS) + 2, *output["semantic_logits"].shape[1:])
    _patch_forward(monkeypatch, model, outputs)
    with pytest.raises(ValueError, match="the semantic branch has 4 classes, the dataset's categories give 3"):
        evaluate(model, dataset, "cpu", progress=False)


def test_checkpoint_configs_from_before_the_panoptic_section_load_with_its_defaults():
    from sfpn.config import DetectorConfig, PanopticConfig, preset_config

    stored = preset_config("faster_rcnn_r18_sfpn_small").to_dict()
    del stored["panoptic"]
    assert DetectorConfig.from_dict(stored).panoptic == PanopticConfig()
