"""The preview page: one self-contained HTML document (no external script, style, font or image).

Its Content-Security-Policy (set by ``edge_app.commands.ui``) lets it talk only to the server it came from, so a
photo chosen here can go nowhere else. ``__MAX_UPLOAD_BYTES__`` and ``__MAX_UPLOAD_MB__`` are filled in by the server.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edge-emotion preview</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d1d1f; background: #f4f4f6; }
  [hidden] { display: none !important; }
  body { margin: 0 auto; max-width: 1100px; padding: 1rem 1.5rem 2rem; }
  h1 { font-size: 1.4rem; margin: 0.2rem 0; }
  .note { color: #555; margin: 0 0 1rem; font-size: 0.9rem; }
  .controls { display: flex; gap: 0.8rem; align-items: center; flex-wrap: wrap; background: #fff;
              padding: 0.8rem 1rem; border-radius: 8px; box-shadow: 0 1px 3px #0002; }
  button, .button { font: inherit; padding: 0.45rem 1.1rem; border-radius: 6px; border: 0; cursor: pointer;
                    background: #2563eb; color: #fff; text-decoration: none; display: inline-block; }
  button:disabled { background: #9db4e8; cursor: default; }
  #status { color: #555; }
  #error { margin: 1rem 0; padding: 0.7rem 1rem; border-radius: 8px; background: #fde8e8; color: #8b1111;
           border: 1px solid #f5b5b5; }
  #results { display: grid; grid-template-columns: minmax(0, 1fr) 420px; gap: 1.2rem; margin-top: 1rem; }
  @media (max-width: 900px) { #results { grid-template-columns: 1fr; } }
  .photo { margin: 0; background: #fff; padding: 0.8rem; border-radius: 8px; box-shadow: 0 1px 3px #0002; }
  .photo img { max-width: 100%; display: block; margin-bottom: 0.7rem; }
  .face { background: #fff; padding: 0.8rem 1rem; border-radius: 8px; box-shadow: 0 1px 3px #0002;
          margin-bottom: 1rem; }
  .face h2 { font-size: 1.1rem; margin: 0 0 0.3rem; }
  .description { margin: 0 0 0.6rem; color: #333; }
  .bar { display: grid; grid-template-columns: 5.5rem 1fr 3.5rem; align-items: center; gap: 0.5rem;
         font-size: 0.9rem; margin: 0.15rem 0; }
  .track { background: #e6e6ea; border-radius: 4px; height: 0.9rem; overflow: hidden; }
  .fill { display: block; height: 100%; }
  .value { text-align: right; font-variant-numeric: tabular-nums; }
  .gradcam { margin: 0.7rem 0 0; display: flex; gap: 0.8rem; align-items: center; }
  .gradcam img { width: 144px; height: 144px; image-rendering: auto; border-radius: 4px; }
  .gradcam figcaption { font-size: 0.85rem; color: #555; }
</style>
</head>
<body data-max-bytes="__MAX_UPLOAD_BYTES__" data-max-mb="__MAX_UPLOAD_MB__">
<h1>edge-emotion &middot; preview</h1>
<p class="note">Photos are read in memory on this machine and never stored or sent anywhere else.</p>
<div class="controls">
  <input type="file" id="file" accept="image/jpeg,image/png">
  <button id="detect" disabled>Detect</button>
  <span id="status"></span>
</div>
<div id="error" role="alert" hidden></div>
<div id="results" hidden>
  <figure class="photo">
    <img id="annotated" alt="the photo with a box and label per face">
    <a id="download" class="button" href="#">Download annotated image</a>
  </figure>
  <div id="faces"></div>
</div>
<script>
"use strict";
const maxBytes = Number(document.body.dataset.maxBytes);
const maxMb = document.body.dataset.maxMb;
const fileInput = document.getElementById("file");
const detect = document.getElementById("detect");
const statusLine = document.getElementById("status");
const errorBox = document.getElementById("error");
const results = document.getElementById("results");

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function percent(p) { return (100 * p).toFixed(1) + "%"; }

function showError(message) {
  results.hidden = true;
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function faceCard(face, index, colours) {
  const card = element("article", "face");
  card.dataset.emotion = face.emotion;
  const title = element("h2", null, "Face " + (index + 1) + ": ");
  title.append(element("span", "emotion", face.emotion), " " + percent(face.probabilities[face.emotion]));
  card.append(title, element("p", "description", face.description));
  const bars = element("div", "bars");
  for (const [name, p] of Object.entries(face.probabilities)) {
    const bar = element("div", "bar");
    bar.dataset.class = name;
    bar.dataset.probability = p;
    const track = element("span", "track");
    const fill = element("span", "fill");
    fill.style.width = percent(p);
    fill.style.background = colours[name];
    track.append(fill);
    bar.append(element("span", "name", name), track, element("span", "value", percent(p)));
    bars.append(bar);
  }
  card.append(bars);
  if (face.heatmap) {
    const figure = element("figure", "gradcam");
    const image = element("img");
    image.src = face.heatmap;
    image.alt = "Grad-CAM heat map of face " + (index + 1);
    figure.append(image, element("figcaption", null,
      "Grad-CAM of the float model: the regions that raised \\u201c" + face.emotion + "\\u201d most are red."));
    card.append(figure);
  }
  return card;
}

function show(result) {
  errorBox.hidden = true;
  document.getElementById("annotated").src = result.image;
  const download = document.getElementById("download");
  download.href = result.image;
  download.download = result.download_name;
  const faces = document.getElementById("faces");
  faces.replaceChildren(...result.faces.map((face, i) => faceCard(face, i, result.colours)));
  results.hidden = false;
}

fileInput.addEventListener("change", () => {
  detect.disabled = fileInput.files.length === 0;
  errorBox.hidden = true;
  results.hidden = true;
});

detect.addEventListener("click", async () => {
  const file = fileInput.files[0];
  if (!file) return;
  if (file.size > maxBytes) {
    showError("This file is " + (file.size / 1048576).toFixed(1) + " MB; the largest accepted upload is "
              + maxMb + " MB.");
    return;
  }
  detect.disabled = true;
  statusLine.textContent = "Detecting\\u2026";
  try {
    const response = await fetch("/api/detect", {method: "POST", body: file,
                                                 headers: {"Content-Type": "application/octet-stream"}});
    const body = await response.json();
    if (response.ok) show(body); else showError(body.error);
  } catch (exc) {
    showError("The server did not answer (" + exc.message + "). Is edge-emotion ui still running?");
  } finally {
    detect.disabled = false;
    statusLine.textContent = "";
  }
});
</script>
</body>
</html>
"""
