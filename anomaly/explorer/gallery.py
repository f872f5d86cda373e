"""The explorer's gallery: every image, paged, filtered by defect kind, misclassified first;
click a tile to see it large (image, evidence overlay, mask); compare a second run's verdicts.

Tiles are `anomaly.overlays.evidence_overlay` pictures on the run's evidence scale, with the
pixel slider as the scale's pixel threshold: the same colours as `score`'s overlays.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from anomaly.explorer.runs import RunView, read_image
from anomaly.onnx_checks import score_text
from anomaly.overlays import PASS, REJECT, EvidenceScale, evidence_overlay, verdict
from anomaly.terminal import printable
from anomaly.viz import to_rgb

THUMB = 192  # tile pictures: at most this many pixels a side (2x a 96-150 px tile)
ZOOM = 512  # the large view: at most this many pixels a side
OUTCOME = {(1, 1): "caught", (0, 0): "passed", (0, 1): "false reject", (1, 0): "escape"}


def _fit(rgb: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return rgb
    s = side / max(h, w)
    return np.asarray(
        Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    )


def png(rgb: np.ndarray) -> bytes:
    """An RGB (or grey) uint8 array as PNG bytes, quickly (light compression)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def outcome(label: int, score: float, threshold: float) -> tuple[str, str]:
    """(PASS or REJECT, caught / passed / false reject / escape) for one image."""
    word = verdict(score, threshold)
    return word, OUTCOME[(int(label > 0), int(word == REJECT))]


class Gallery:
    """The gallery widget of a `ThresholdExplorer` (`owner`): controls, tiles, large view."""

    def __init__(self, owner, page_size: int = 12) -> None:
        import ipywidgets as w

        self.owner = owner
        self.page_size = page_size
        self.page = 0
        self._images: dict[tuple, np.ndarray] = {}
        self._pngs: dict[tuple, bytes] = {}
        self._order = np.zeros(0, np.int64)
        self.zoomed: int | None = None

        self.show = w.Dropdown(
            options=[
                ("misclassified", "wrong"),
                ("all images", "all"),
                ("the two runs disagree", "disagree"),
            ],
            value="wrong",
            description="Show",
            layout=w.Layout(width="260px"),
        )
        self.show.add_class("anomaly-show")
        self.kind = w.Dropdown(
            options=[("all kinds", "")],
            value="",
            description="Kind",
            layout=w.Layout(width="220px"),
        )
        self.kind.add_class("anomaly-kind")
        self.compare = w.Dropdown(
            options=[("no second run", "")],
            value="",
            description="Compare",
            layout=w.Layout(width="260px"),
            disabled=len(owner.runs) < 2,
        )
        self.compare.add_class("anomaly-compare")
        self.prev_button = w.Button(
            description="previous", icon="arrow-left", layout=w.Layout(width="110px")
        )
        self.prev_button.add_class("anomaly-prev")
        self.next_button = w.Button(
            description="next", icon="arrow-right", layout=w.Layout(width="110px")
        )
        self.next_button.add_class("anomaly-next")
        self.page_label = w.HTML()
        self.page_label.add_class("anomaly-page")
        self.title = w.HTML()
        self.title.add_class("anomaly-gallery-title")
        tile = w.Layout(width="100%", height="auto", object_fit="contain")
        self.images = [w.Image(format="png", layout=tile) for _ in range(page_size)]
        self.captions = [w.HTML() for _ in range(page_size)]
        self.zoom_buttons = [
            w.Button(description="enlarge", icon="search-plus", layout=w.Layout(width="100%"))
            for _ in range(page_size)
        ]
        self.tiles = []
        for slot, (img, cap, button) in enumerate(
            zip(self.images, self.captions, self.zoom_buttons)
        ):
            button.add_class(f"anomaly-zoom-{slot}")
            button.on_click(lambda _, s=slot: self.zoom_slot(s))
            box = w.VBox([img, cap, button], layout=w.Layout(min_width="0"))
            box.add_class("anomaly-tile")
            self.tiles.append(box)
        self.grid = w.GridBox(
            self.tiles,
            layout=w.Layout(
                grid_template_columns="repeat(auto-fill, minmax(110px, 1fr))",
                grid_gap="8px",
                width="100%",
            ),
        )
        self.grid.add_class("anomaly-gallery")
        self.zoom_title = w.HTML()
        self.zoom_images = w.HBox(layout=w.Layout(flex_flow="row wrap", grid_gap="6px"))
        self.close_button = w.Button(
            description="close", icon="times", layout=w.Layout(width="100px")
        )
        self.close_button.add_class("anomaly-zoom-close")
        self.zoom_box = w.VBox(
            [self.zoom_title, self.zoom_images, self.close_button],
            layout=w.Layout(display="none", border="1px solid #ccc", padding="6px", width="100%"),
        )
        self.zoom_box.add_class("anomaly-zoom")
        wrap = w.Layout(flex_flow="row wrap", align_items="center", grid_gap="6px 12px")
        self.widget = w.VBox(
            [
                w.HBox([self.show, self.kind, self.compare], layout=wrap),
                self.title,
                w.HBox([self.prev_button, self.page_label, self.next_button], layout=wrap),
                self.zoom_box,
                self.grid,
            ],
            layout=w.Layout(width="100%"),
        )

        for control in (self.show, self.kind, self.compare):
            control.observe(self._on_filter, names="value")
        self.prev_button.on_click(lambda _: self.go_to_page(self.page - 1))
        self.next_button.on_click(lambda _: self.go_to_page(self.page + 1))
        self.close_button.on_click(lambda _: self.close_zoom())

    # --- which images -------------------------------------------------------------------
    @property
    def other(self) -> RunView | None:
        return self.owner.runs.get(self.compare.value) if self.compare.value else None

    def wrong(self, r: RunView | None = None) -> np.ndarray:
        r = r or self.owner.run
        t = self.owner.threshold_of(r)
        return (r.pred.scores >= t) != (r.pred.labels > 0)

    def order(self, filtered: bool = True) -> np.ndarray:
        """Image indices shown, in order: the filter's images (all with filtered=False),
        misclassified first (most wrong first), then the correct ones closest to the threshold."""
        r, t = self.owner.run, self.owner.threshold
        wrong = self.wrong(r)
        keep = np.ones(len(r.pred), bool)
        if filtered and self.kind.value:
            keep &= np.asarray(r.pred.defects) == self.kind.value
        if filtered and self.show.value == "wrong":
            keep &= wrong
        elif filtered and self.show.value == "disagree" and self.other is not None:
            o = self.other
            keep &= (r.pred.scores >= t) != (o.pred.scores >= self.owner.threshold_of(o))
        margin = np.abs(r.pred.scores - t)
        order = np.lexsort((np.where(wrong, -margin, margin), ~wrong))
        return order[keep[order]]

    @property
    def n_pages(self) -> int:
        return max(1, -(-len(self._order) // self.page_size))

    # --- updates ------------------------------------------------------------------------
    def on_run(self) -> None:
        """The run changed: kinds, comparison choices and page start over."""
        r = self.owner.run
        kinds = [("all kinds", "")] + [(k, k) for k in r.kinds]
        if self.kind.value not in dict(kinds).values():
            self.kind.value = ""
        self.kind.options = kinds
        others = [("no second run", "")] + [
            (o.label, o.name) for o in self.owner.runs.values() if o.name != r.name
        ]
        if self.compare.value not in [v for _, v in others]:
            self.compare.value = ""
        self.compare.options = others
        self.page = 0
        self._images.clear()

    def _on_filter(self, change) -> None:
        self.page = 0
        if not self.owner._busy:
            self.refresh()

    def go_to_page(self, page: int) -> int:
        self.page = int(np.clip(page, 0, self.n_pages - 1))
        self.refresh()
        return self.page

    def refresh(self) -> None:
        r, t = self.owner.run, self.owner.threshold
        self._order = self.order()
        self.page = min(self.page, self.n_pages - 1)
        start = self.page * self.page_size
        shown = self._order[start : start + self.page_size]
        n_wrong = int(self.wrong(r).sum())
        what = {
            "wrong": "misclassified",
            "all": "images",
            "disagree": "images where the runs disagree",
        }[self.show.value]
        kind = f" of kind <b>{html.escape(self.kind.value)}</b>" if self.kind.value else ""
        self.title.value = (
            f"<div style='font-size:13px'><b>{n_wrong} misclassified</b> of {len(r.pred)} "
            f"images at threshold {float(t)!r}. Showing {len(self._order)} {what}{kind}. "
            "Red: evidence above the pixel threshold on a rejected image (on one that passes, "
            "the strongest yellow), yellow: raised; green outline: the true "
            f"defect.{self._comparison_text()}{self._image_note(r)}</div>"
        )
        self.page_label.value = (
            f"<span>{start + 1 if len(shown) else 0}&ndash;"
            f"{start + len(shown)} of {len(self._order)} "
            f"(page {self.page + 1}/{self.n_pages})</span>"
        )
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= self.n_pages - 1
        for slot in range(self.page_size):
            box, img, cap = self.tiles[slot], self.images[slot], self.captions[slot]
            if slot >= len(shown):
                box.layout.display, cap.value = "none", ""
                continue
            i = int(shown[slot])
            box.layout.display = None
            img.value = self.tilepng(r, i)
            cap.value = self._caption(i)
        if self.zoomed is not None:
            self.zoom(self.zoomed)

    def image_note(self, r: RunView) -> str:
        """What was not read of run r's images, and why ("" when all were, or given)."""
        return "" if self.owner.images is not None else r.image_note

    def _image_note(self, r: RunView) -> str:
        note = self.image_note(r)
        return (
            f"<br><span class='anomaly-image-note' style='color:#c62828'>Note: "
            f"{html.escape(note)}.</span>"
            if note
            else ""
        )

    def _comparison_text(self) -> str:
        o = self.other
        if o is None:
            return ""
        a, b = self.wrong(), self.wrong(o)
        to = self.owner.threshold_of(o)
        return (
            f"<br>Compared with <b>{html.escape(o.label)}</b> at its threshold {to:.4g}: "
            f"both right {int(np.sum(~a & ~b))}, only this run wrong {int(np.sum(a & ~b))}, "
            f"only {html.escape(o.name)} wrong {int(np.sum(~a & b))}, both wrong "
            f"{int(np.sum(a & b))}."
        )

    def _caption(self, i: int) -> str:
        r = self.owner.run
        lines = [self._verdict_line(r, i, "")]
        if self.other is not None:
            lines.append(self._verdict_line(self.other, i, f"{html.escape(self.other.name)}: "))
        name = html.escape(printable(Path(r.pred.paths[i]).name))
        return (
            f"<div style='font-size:11px;line-height:1.25;overflow-wrap:anywhere'>"
            f"{'<br>'.join(lines)}<br>{html.escape(r.pred.defects[i])} &middot; "
            f"<span style='color:#777'>{name}</span></div>"
        )

    def _verdict_line(self, r: RunView, i: int, prefix: str) -> str:
        score, t = float(r.pred.scores[i]), self.owner.threshold_of(r)
        word, what = outcome(r.pred.labels[i], score, t)
        right = what in ("caught", "passed")
        colour = "#2e7d32" if right else "#c62828"
        return (
            f"<b style='color:{colour}'>{prefix}{word}: {what}</b> "
            f"<span style='color:#555'>score {score_text(score, t)}</span>"  # read as decided
        )

    # --- pictures -----------------------------------------------------------------------
    def base_image(self, r: RunView, i: int, side: int = THUMB) -> np.ndarray:
        """Image i as uint8 RGB, at most `side` pixels a side: given images, the file (only
        from inside the run's data folder, `runs.image_files`), or the map in grey when neither
        exists (the title says so)."""
        key = (i, side)
        if key not in self._images:
            images = self.owner.images
            img = None
            if images is not None:
                img = np.round(to_rgb(images[i]) * 255).astype(np.uint8)
            if img is None:
                img = read_image(r.files[i], side)
            if img is None:
                m = r.pred.maps[i]
                img = np.round(to_rgb((m - r.map_lo) / (r.map_hi - r.map_lo)) * 255)
                img = img.astype(np.uint8)
            if len(self._images) > 8 * self.page_size:
                self._images.clear()
            self._images[key] = _fit(img, side)
        return self._images[key]

    def scale_of(self, r: RunView) -> EvidenceScale:
        pt = self.owner.pixel_threshold if r is self.owner.run else r.scale.pixel_threshold
        return EvidenceScale(r.scale.floor, pt)

    def passed(self, r: RunView, i: int) -> bool:
        """Whether image i passes at the run's threshold now (its evidence is then drawn without
        red, as `score`'s overlays draw it)."""
        return verdict(float(r.pred.scores[i]), self.owner.threshold_of(r)) == PASS

    def overlay(self, r: RunView, i: int, side: int = THUMB) -> np.ndarray:
        mask = r.pred.masks[i] if r.pred.masks is not None else None
        image, scale = self.base_image(r, i, side), self.scale_of(r)
        return evidence_overlay(image, r.pred.maps[i], scale, mask, passed=self.passed(r, i))

    def tilepng(self, r: RunView, i: int) -> bytes:
        key = (r.name, i, self.scale_of(r), self.passed(r, i))
        if key not in self._pngs:
            if len(self._pngs) > 8 * self.page_size:
                self._pngs.clear()
            self._pngs[key] = png(self.overlay(r, i))
        return self._pngs[key]

    # --- the large view -----------------------------------------------------------------
    def zoom_slot(self, slot: int) -> int:
        """Show the image of gallery slot `slot` large; return its index."""
        i = int(self._order[self.page * self.page_size + slot])
        self.zoom(i)
        return i

    def zoom(self, i: int) -> None:
        """Image i large: the image, this run's evidence, the true mask (and the second run)."""
        import ipywidgets as w

        r = self.owner.run
        self.zoomed = i
        image = self.base_image(r, i, ZOOM)
        panels = [("image", image), (f"{r.name}: evidence", self.overlay(r, i, ZOOM))]
        if r.pred.masks is not None:
            mask = (r.pred.masks[i] > 0).astype(np.uint8) * 255
            panels.append(("true defect (mask)", mask))
        if self.other is not None:
            panels.append((f"{self.other.name}: evidence", self.overlay(self.other, i, ZOOM)))
        boxes = []
        for name, picture in panels:
            pic = w.Image(
                value=png(np.asarray(picture)),
                format="png",
                layout=w.Layout(width="100%", max_width="360px", height="auto"),
            )
            boxes.append(
                w.VBox(
                    [w.HTML(f"<b style='font-size:12px'>{html.escape(name)}</b>"), pic],
                    layout=w.Layout(width="100%", max_width="360px"),
                )
            )
        self.zoom_images.children = boxes
        self.zoom_title.value = (
            f"<div style='font-size:13px' class='anomaly-zoom-title'>{self._caption(i)}</div>"
        )
        self.zoom_box.layout.display = None

    def close_zoom(self) -> None:
        self.zoomed = None
        self.zoom_box.layout.display = "none"
        self.zoom_images.children = ()


def close_tree(*roots) -> None:
    """Close widgets and every widget they hold (`children`, recursively): the kernel's registry
    keeps each until it is closed (an explorer left ~200, 6 MB on tiny data, per cell run)."""
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        widget = todo.pop()
        if widget is None or id(widget) in seen or not hasattr(widget, "close"):
            continue
        seen.add(id(widget))
        todo.extend(getattr(widget, "children", ()) or ())
        todo.extend(getattr(widget, name, None) for name in ("layout", "style"))  # widgets too
        widget.close()
