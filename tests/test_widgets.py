import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

from kneelib.widgets import SubjectExplorer, render_subject_view


def tiny_data(n=3, n_slices=4, size=16):
    rng = np.random.default_rng(0)
    images = rng.random((n, 2, n_slices, size, size)).astype(np.float32)
    cams = rng.random((n, 2, n_slices, 4, 4)).astype(np.float32)
    cams[1, 1, 2] += 5.0  # subject 1: the right knee's slice 2 is hottest
    return images, cams, np.array([0.2, 0.9, 0.6]), np.array([0, 1, 0])


def overlay_images(fig):
    return [im for ax in fig.axes for im in ax.get_images()[1:]]


def test_static_view_shows_both_knees_overlay_and_title():
    images, cams, prob, labels = tiny_data()
    fig = render_subject_view(images[1], cams[1], slice_index=[1, 2], alpha=0.3, probability=prob[1],
                              label=labels[1], subject_id="9000001")
    assert len(fig.axes) == 4  # 2 slices x 2 knees
    assert all(im.get_alpha() == 0.3 for im in overlay_images(fig)) and len(overlay_images(fig)) == 4
    assert overlay_images(fig)[0].get_array().shape == (16, 16)  # CAM upsampled to the image
    title = fig._suptitle.get_text()
    assert "9000001" in title and "predicted right" in title and "label: right" in title and "correct" in title
    assert fig.axes[1].spines["left"].get_edgecolor()[:3] == (1.0, 0.0, 0.0)  # right knee framed
    no_cam = render_subject_view(images[0], cams[0], 0, show_cam=False)
    assert overlay_images(no_cam) == []
    plt.close("all")
    with pytest.raises(ValueError, match="slice_index"):
        render_subject_view(images[0], cams[0], 9)


def test_explorer_controls_drive_the_view():
    images, cams, prob, labels = tiny_data()
    explorer = SubjectExplorer(images, cams, prob, labels, subject_ids=["a", "b", "c"])
    explorer.subject.value = 1
    assert explorer.slice.value == 2  # jumped to the top-CAM slice of the predicted knee
    assert "b" in explorer.info.value and "predicted right" in explorer.info.value
    explorer.alpha.value = 0.8
    assert all(im.get_alpha() == 0.8 for im in overlay_images(explorer.figure))
    explorer.show_cam.value = False
    assert overlay_images(explorer.figure) == []
    explorer.slice.value = 3
    assert explorer.figure.axes[0].get_title().endswith("slice 3")
    plain = SubjectExplorer(images)  # no CAMs, predictions or labels
    assert plain.show_cam.disabled and overlay_images(plain.figure) == []
    with pytest.raises(ValueError, match="labels"):
        SubjectExplorer(images, labels=[0, 1])
    plt.close("all")


def test_static_explorer_is_self_contained_small_and_matches_the_live_one():
    import base64
    import io
    import json
    import re

    from PIL import Image

    from kneelib.widgets import StaticExplorer

    images, cams, prob, labels = tiny_data(size=200)
    live = SubjectExplorer(images, cams, prob, labels, subject_ids=["a", "b", "c"])
    viewer = live.to_static(max_side=100)
    assert viewer.n_shown == 3 and viewer.html == viewer._repr_html_()
    data = json.loads(re.search(r'<script type="application/json" class="kx-data">(.*?)</script>',
                                viewer.html).group(1))
    b = data["views"][1]
    assert b["start"] == live.top_slice(1) == 2 and "predicted right" in b["title"] and b["name"] == "b"
    assert [p["outline"] for p in b["panels"]] == [False, True]  # the right knee is the painful one
    assert len(data["stacks"]) == 3 * 2 * 2 and all(len(stack) == 4 for stack in data["stacks"])  # slices
    assert b["panels"][1]["caption"] == "Right knee, slice {slice}" and b["panels"][1]["over"] is not None
    frame = Image.open(io.BytesIO(base64.b64decode(data["stacks"][b["panels"][0]["base"]][0].split(",", 1)[1])))
    assert frame.format == "JPEG" and frame.size == (100, 100)  # downscaled from 200 px
    assert "http://" not in viewer.html and "https://" not in viewer.html and "<script src" not in viewer.html
    # the size cap drops subjects (never the first) and says so
    capped = StaticExplorer(images, cams, prob, labels, max_side=100, max_bytes=1)
    assert capped.n_shown == 1 and "first 1 of 3 subjects" in capped.html and capped.n_bytes < viewer.n_bytes
    plain = StaticExplorer(images)  # no CAMs: no overlay controls shown
    assert json.loads(re.search(r'class="kx-data">(.*?)</script>', plain.html).group(1))["views"][0]["panels"][0][
        "over"] is None and "CAM opacity" not in plain.html
    with pytest.raises(ValueError, match="labels"):
        StaticExplorer(images, labels=[0, 1])
    plt.close("all")


def test_static_segmentation_viewer_shares_the_slices_and_caps_its_size():
    import json
    import re

    from kneelib.figures.qmri import static_segmentation_viewer

    rng = np.random.default_rng(1)
    image = rng.random((10, 40, 30)).astype(np.float32)
    truth = np.zeros(image.shape, np.uint8)
    truth[:, 10:20, 5:15] = 1
    viewer = static_segmentation_viewer(image, {"truth": truth, "prediction": np.roll(truth, 3, axis=2)})
    data = json.loads(re.search(r'class="kx-data">(.*?)</script>', viewer.html).group(1))
    assert [v["name"] for v in data["views"]] == ["truth", "prediction"]
    assert len(data["stacks"]) == 3 and data["views"][0]["panels"][0]["base"] == data["views"][1]["panels"][0]["base"]
    assert data["stacks"][data["views"][0]["panels"][0]["over"]][0].startswith("data:image/png;base64,")
    assert data["slice_numbers"] == list(range(10)) and viewer.display_size == (270, 360)
    capped = static_segmentation_viewer(image, {"truth": truth}, max_bytes=len(viewer.html) // 4)
    numbers = json.loads(re.search(r'class="kx-data">(.*?)</script>', capped.html).group(1))["slice_numbers"]
    assert 1 < len(numbers) < 10 and numbers[0] == 0 and "slices shown" in capped.html
    with pytest.raises(ValueError, match="overlay 'bad'"):
        static_segmentation_viewer(image, {"bad": truth[:5]})


def test_one_output_serves_jupyterlab_and_the_book():
    from kneelib.figures.qmri import segmentation_viewer

    images, cams, prob, labels = tiny_data()
    bundle = SubjectExplorer(images, cams, prob, labels)._repr_mimebundle_()
    # JupyterLab renders the widget view first; the book (nb_mime_priority_overrides) the HTML twin
    assert "application/vnd.jupyter.widget-view+json" in bundle and "kneelib-explorer" in bundle["text/html"]
    image = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
    viewer = segmentation_viewer(image, {"truth": (image > 0.5).astype(np.uint8)})
    bundle = viewer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "kneelib-explorer" in bundle["text/html"]
    assert viewer.widget.children  # the VBox of the live viewer
    plt.close("all")


def test_the_book_prefers_the_html_twin():
    import yaml

    from kneelib.config import repo_root

    config = yaml.safe_load((repo_root() / "book" / "_config.yml").read_text())["sphinx"]["config"]
    assert ["html", "text/html", 5] in config["nb_mime_priority_overrides"]  # before widget views (10)
