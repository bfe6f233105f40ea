"""The report's parts, written once and rendered twice (report.md and report.html), and the HTML page.

A :class:`Table` or a :class:`Section` (a title, paragraphs, tables) renders itself as Markdown and as HTML, so
the two files are made from the same facts. :func:`page` lays out report.html: the runs table, the sections
(the launcher's winner), a before/after gallery (each photo with every run's translation of it; a click puts the
generators side by side) and the curves. One self-contained file: images are ``data:`` URIs, style and script are
inline, and its Content-Security-Policy lets the browser fetch nothing, so it reads the same offline. Every string
that reaches the page (run names, experiments, the command) is escaped here. No torch.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Sequence
from dataclasses import dataclass

from cyclegan_dist.tables import format_table


def esc(text: object) -> str:
    """Text for HTML content or a quoted attribute value."""
    return html.escape(str(text), quote=True)


def data_uri(image: bytes) -> str:
    """A PNG or JPEG as a ``data:`` URI (the page carries its images)."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        kind = "png"
    elif image.startswith(b"\xff\xd8\xff"):
        kind = "jpeg"
    else:
        raise ValueError("an embedded image must be a PNG or a JPEG")
    return f"data:image/{kind};base64,{base64.b64encode(image).decode('ascii')}"


@dataclass(frozen=True)
class Table:
    """Headers, rows of text cells, and the columns aligned right (numbers)."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    right: frozenset[int] = frozenset()

    def markdown(self, aligned: bool = True) -> str:
        """``aligned``: columns padded to their widest cell (:func:`format_table`); else one space around cells."""
        rows = [[cell.replace("|", "\\|") for cell in row] for row in self.rows]
        if aligned:
            return format_table(self.headers, rows, markdown=True, right=sorted(self.right))
        rule = "|" + "|".join("---:" if i in self.right else "---" for i in range(len(self.headers))) + "|"
        return "\n".join(["| " + " | ".join(r) + " |" for r in [list(self.headers)]] + [rule]
                         + ["| " + " | ".join(r) + " |" for r in rows])

    def html(self, table_id: str = "") -> str:
        def row(cells: Sequence[str], tag: str) -> str:
            return "<tr>" + "".join(f"<{tag}{' class=num' if i in self.right else ''}>{esc(c)}</{tag}>"
                                    for i, c in enumerate(cells)) + "</tr>"

        head = row(self.headers, "th")
        body = "\n".join(row(r, "td") for r in self.rows)
        return (f"<table{f' id={esc(table_id)}' if table_id else ''}>\n<thead>{head}</thead>\n<tbody>\n{body}\n"
                "</tbody>\n</table>")


@dataclass(frozen=True)
class Text:
    """A paragraph; ``strong``: the answer of its section, in bold."""

    text: str
    strong: bool = False


@dataclass(frozen=True)
class Section:
    """A titled part of the report after the runs table (the launcher's "which generator wins")."""

    title: str
    blocks: tuple[Text | Table, ...]

    def markdown(self) -> list[str]:
        lines = ["", f"## {self.title}"]
        for block in self.blocks:
            lines.append("")
            if isinstance(block, Table):
                lines += block.markdown(aligned=False).splitlines()
            else:
                lines.append(f"**{block.text}**" if block.strong else block.text)
        return lines

    def html(self) -> str:
        parts = [f"<section class=extra>\n<h2>{esc(self.title)}</h2>"]
        for block in self.blocks:
            if isinstance(block, Table):
                parts.append(block.html())
            else:
                parts.append(f"<p class=verdict><strong>{esc(block.text)}</strong></p>" if block.strong
                             else f"<p>{esc(block.text)}</p>")
        return "\n".join(parts + ["</section>"])


@dataclass(frozen=True)
class Gallery:
    """A few photos and each run's translation of them, encoded (PNG or JPEG): ``photos[j]`` holds photo j, then
    each run's translation of it, in the order of ``labels`` (the photos' label, then one label per run)."""

    labels: tuple[str, ...]
    photos: tuple[tuple[bytes, ...], ...]


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.95em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { font-size: 1.05em; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
figure.photo { margin: 0; padding: 6px; border: 1px solid #ddd; border-radius: 6px; width: 260px; }
figure.photo button { padding: 0; border: 0; background: none; cursor: zoom-in; display: block; }
figure.photo .input { width: 260px; height: 260px; display: block; }
figure.photo .outputs { display: flex; gap: 4px; margin-top: 4px; }
figure.photo .outputs img { flex: 1 1 0; min-width: 0; max-width: 128px; aspect-ratio: 1; }
figure.photo figcaption { font-size: 0.8em; color: #555; margin-top: 4px; }
#curves img { max-width: 100%; }
#compare { position: fixed; inset: 0; background: rgba(0, 0, 0, 0.82); overflow: auto; padding: 2em; }
#compare[hidden] { display: none; }
#compare .panel { background: #fff; border-radius: 8px; padding: 1em 1.2em; max-width: fit-content; margin: auto; }
#compare .side { display: flex; flex-wrap: wrap; gap: 12px; }
#compare figure { margin: 0; text-align: center; }
#compare figure img { width: 256px; height: 256px; display: block; }
#compare figcaption { font-size: 0.85em; margin-top: 4px; max-width: 256px; overflow-wrap: anywhere; }
#compare .close { float: right; font-size: 1.2em; cursor: pointer; }
"""

# Click a photo: it and each run's translation of it, side by side (large, labelled); Escape or a click outside
# closes, the arrow keys go to the previous / next photo; report.html#photo-2 opens on photo 2 (a link to share).
# Labels are set as text, never parsed as HTML.
SCRIPT = r"""
(() => {
  const box = document.getElementById("compare"), side = box.querySelector(".side"), title = box.querySelector("h2");
  const photos = Array.from(document.querySelectorAll("#gallery figure.photo"));
  let current = -1;
  function show(i) {
    current = (i + photos.length) % photos.length;
    side.replaceChildren(...Array.from(photos[current].querySelectorAll("img"), (small) => {
      const figure = document.createElement("figure"), big = document.createElement("img");
      const caption = document.createElement("figcaption");
      big.src = small.src; big.alt = small.alt; caption.textContent = small.dataset.label;
      figure.append(big, caption);
      return figure;
    }));
    title.textContent = photos[current].dataset.title;
    box.hidden = false;
    history.replaceState(null, "", "#photo-" + (current + 1));
  }
  function close() { box.hidden = true; current = -1; history.replaceState(null, "", location.pathname); }
  photos.forEach((figure, i) => figure.querySelector("button").addEventListener("click", () => show(i)));
  box.querySelector(".close").addEventListener("click", close);
  box.addEventListener("click", (event) => { if (event.target === box) close(); });
  document.addEventListener("keydown", (event) => {
    if (current < 0) return;
    if (event.key === "Escape") close();
    if (event.key === "ArrowRight") show(current + 1);
    if (event.key === "ArrowLeft") show(current - 1);
  });
  const linked = /^#photo-(\d+)$/.exec(location.hash);
  if (linked && linked[1] >= 1 && linked[1] <= photos.length) show(linked[1] - 1);
})();
"""


def content_policy(script: str) -> str:
    """Nothing is fetched (images are ``data:`` URIs); only the page's own script runs (its hash)."""
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode("ascii")
    return f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


def _gallery(gallery: Gallery) -> str:
    photo_label, run_labels = gallery.labels[0], gallery.labels[1:]
    figures = []
    for j, (photo, *outputs) in enumerate(gallery.photos, 1):
        name = f"photo {j}"
        small = "".join(f"<img src=\"{data_uri(image)}\" alt=\"{esc(label)}: {name} translated\" "
                        f"title=\"{esc(label)}\" data-label=\"{esc(label)}\">"
                        for image, label in zip(outputs, run_labels))
        figures.append(
            f"<figure class=photo data-title=\"{name}: each run's translation\">"
            f"<button type=button title=\"compare the runs on this photo\"><img class=input src=\"{data_uri(photo)}\" "
            f"alt=\"{name}\" data-label=\"{esc(photo_label)}\"></button>"
            f"<div class=outputs>{small}</div><figcaption>{name}, then {esc(', '.join(run_labels))}"
            "</figcaption></figure>")
    return "<div class=gallery>\n" + "\n".join(figures) + "\n</div>"


def page(*, title: str, written: str, command: str | None, runs: Table, runs_note: str,
         sections: Sequence[Section], gallery: Gallery, curves: bytes, curves_note: str) -> str:
    """report.html: the whole report in one file."""
    by = f" by <code>{esc(command)}</code>" if command else ""
    return "\n".join([
        "<!DOCTYPE html>", "<html lang=en>", "<head>", "<meta charset=utf-8>",
        f"<meta http-equiv=Content-Security-Policy content=\"{content_policy(SCRIPT)}\">",
        "<meta name=viewport content=\"width=device-width, initial-scale=1\">",
        f"<title>{esc(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        f"<h1>{esc(title)}</h1>", f"<p>Written {esc(written)}{by}.</p>",
        "<section id=runs-section>", runs.html("runs"), f"<p>{esc(runs_note)}</p>", "</section>",
        *(s.html() for s in sections),
        "<section id=gallery>", "<h2>Before / after</h2>",
        "<p>Each photo, then each run's translation of it. Click a photo to compare the runs side by side.</p>",
        _gallery(gallery), "</section>",
        "<section id=curves>", "<h2>Curves</h2>", f"<img src=\"{data_uri(curves)}\" alt=\"loss and FID curves\">",
        f"<p>{esc(curves_note)}</p>", "</section>",
        "<div id=compare hidden role=dialog aria-modal=true aria-label=\"the runs side by side\"><div class=panel>",
        "<button type=button class=close title=\"close (Escape)\">×</button><h2></h2><div class=side></div>",
        "</div></div>",
        f"<script>{SCRIPT}</script>", "</body>", "</html>", ""])
