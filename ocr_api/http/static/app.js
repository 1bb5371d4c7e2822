// The web page: sends each file to the service (images to /ocr, PDFs as jobs, their pages shown as they finish)
// and shows every page's markdown, blocks and raw text beside the page with its boxes. The model's output is
// untrusted: markdown is rendered by markdown-it and sanitized by DOMPurify before it reaches the page, blocks
// and raw text are set as text only, and the page's Content-Security-Policy runs no inline script at all.
"use strict";

const config = JSON.parse(document.getElementById("config").textContent);
const FINISHED = ["succeeded", "partial", "failed", "cancelled"];
const FILES_AT_ONCE = 2; // the service bounds pages in flight itself; two files keep it busy without a queue here
const POLL_MS = 400;
const PAGES_SHOWN = 10; // a document shows this many pages at a time: a 1,500-page job stays as light as a short one
const SVG = "http://www.w3.org/2000/svg";
// What a person can do about the refusals this page can help with: the fields are on this page.
const HINTS = {
  missing_api_key: "Enter your API key in the 'API key' field above, then read again.",
  invalid_api_key: "The key in the 'API key' field above is not one this service accepts.",
  pdf_password_required: "The PDF is encrypted: enter its password in the 'PDF password' field above, then read again.",
  pdf_password_incorrect: "The password in the 'PDF password' field above is not this PDF's.",
};

const markdown = window.markdownit({ html: true, linkify: false }); // tables come from the model as HTML
window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
  // The model's figure references point at files this page does not have; only inline images stay.
  if (node.tagName === "IMG" && !(node.getAttribute("src") || "").startsWith("data:image/")) {
    node.replaceWith(document.createTextNode(`[figure${node.alt ? ": " + node.alt : ""}]`));
  }
});

function renderMarkdown(text) {
  return window.DOMPurify.sanitize(markdown.render(text || ""), {
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed"],
    FORBID_ATTR: ["style"],
  });
}

class ApiError extends Error {
  constructor(status, body) {
    const error = body && (body.error && body.error.message ? body.error.message : body.error);
    const code = body && (body.code || (body.error && body.error.code));
    const said = HINTS[code] || error;
    super(said ? `${said} (${code}, HTTP ${status})` : `The service answered HTTP ${status}.`);
    this.status = status;
    this.code = code;
  }
}

function authorization() {
  const key = document.getElementById("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function call(method, path, body) {
  const headers = authorization();
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch (error) {
    throw new Error(`The service could not be reached: ${error.message}`);
  }
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json() : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return { status: response.status, data };
}

// A job's picture (annotated page, figure) is a link behind the same key: fetched with it, shown from memory.
async function picture(url) {
  try {
    const response = await fetch(url, { headers: authorization() });
    return response.ok ? URL.createObjectURL(await response.blob()) : "";
  } catch {
    return "";
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// PDFs go as jobs (progress, pages as they finish, a searchable PDF); so does an image over /ocr's upload limit, and
// every image when its searchable PDF is asked for (one reading gives the result and the PDF).
const asJob = (file) =>
  file.type === "application/pdf" || /\.pdf$/i.test(file.name) || file.size > config.max_upload_mb * 1024 * 1024 ||
  byId("searchable").checked;
const byId = (id) => document.getElementById(id);

function requestFields(file, job = false) {
  const form = new FormData();
  if (job) form.append("output", "pdf"); // a job's searchable PDF, written as its pages finish
  form.append("file", file, file.name);
  form.append("task", byId("task").value);
  if (byId("task").value === "locate") form.append("phrase", byId("phrase").value);
  form.append("mode", byId("mode").value);
  if (byId("pages").value.trim()) form.append("pages", byId("pages").value.trim());
  if (byId("password").value) form.append("password", byId("password").value);
  form.append("figures", byId("figures").checked ? "true" : "false");
  form.append("annotate", "true"); // the page image with its boxes, for every result
  return form;
}

function fileCard(file) {
  const card = byId("file-card").content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = file.name;
  card.dataset.filename = file.name;
  card.entries = []; // every page's entry; PAGES_SHOWN of them are shown, from card.from on
  card.from = 0;
  card.querySelector(".previous").addEventListener("click", () => showWindow(card, card.from - PAGES_SHOWN));
  card.querySelector(".next").addEventListener("click", () => showWindow(card, card.from + PAGES_SHOWN));
  byId("results").append(card);
  return card;
}

const baseName = (card) => card.dataset.filename.replace(/\.[^.]+$/, "") || "result";

// Show the pages from ``from`` on (PAGES_SHOWN of them): their pictures are fetched now, the others' let go.
function showWindow(card, from) {
  card.from = Math.max(0, Math.min(from, Math.max(0, card.entries.length - 1)));
  card.querySelectorAll(".pages img[src^='blob:']").forEach((image) => URL.revokeObjectURL(image.src));
  const shown = card.entries.slice(card.from, card.from + PAGES_SHOWN);
  card.querySelector(".pages").replaceChildren(...shown.map((entry) => pageCard(entry, baseName(card))));
  updatePager(card);
}

// A page finished: shown at once if it falls in the pages on screen.
function addEntry(card, entry) {
  card.entries.push(entry);
  const index = card.entries.length - 1;
  if (index >= card.from && index < card.from + PAGES_SHOWN) {
    card.querySelector(".pages").append(pageCard(entry, baseName(card)));
  }
  updatePager(card);
}

function updatePager(card) {
  const total = card.entries.length;
  const pager = card.querySelector(".pager");
  pager.hidden = total <= PAGES_SHOWN;
  pager.querySelector(".shown").textContent =
    `Pages ${card.from + 1}-${Math.min(card.from + PAGES_SHOWN, total)} of ${total}`;
  pager.querySelector(".previous").disabled = card.from === 0;
  pager.querySelector(".next").disabled = card.from + PAGES_SHOWN >= total;
}

function setState(card, state, done, total) {
  card.querySelector(".state").textContent = state;
  card.dataset.state = state;
  const bar = card.querySelector("progress");
  if (total) {
    bar.max = total;
    bar.value = done;
  } else {
    bar.removeAttribute("value"); // indeterminate: one request, no pages to count
  }
}

function showError(card, error) {
  const line = card.querySelector(".error");
  line.textContent = error.message;
  line.hidden = false;
  setState(card, "failed", 0, 1);
}

function download(name, href) {
  const link = document.createElement("a");
  link.href = href;
  link.download = name;
  link.textContent = name;
  return link;
}

// The file's markdown and JSON; each page offers its own annotated picture beside its title.
function offerDownloads(card, result) {
  const base = baseName(card);
  const json = new Blob([JSON.stringify(result, null, 2)], { type: "application/json" });
  const md = new Blob([result.markdown || result.text || ""], { type: "text/markdown" });
  const line = card.querySelector(".downloads");
  line.replaceChildren("Download: ", download(`${base}.md`, URL.createObjectURL(md)), " ",
    download(`${base}.json`, URL.createObjectURL(json)));
  line.hidden = false;
}

function overlay(blocks, width, height) {
  const svg = document.createElementNS(SVG, "svg");
  if (width && height) svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  else svg.dataset.pending = "size"; // an image sent as a job: its size comes with the job's result
  svg.setAttribute("preserveAspectRatio", "none");
  blocks.forEach((block, index) => {
    for (const [x1, y1, x2, y2] of block.boxes) {
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", x1);
      rect.setAttribute("y", y1);
      rect.setAttribute("width", Math.max(1, x2 - x1));
      rect.setAttribute("height", Math.max(1, y2 - y1));
      rect.dataset.block = index;
      rect.classList.add("box");
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${block.label}: ${block.text.slice(0, 200)}`;
      rect.append(title);
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", x1);
      label.setAttribute("y", Math.max(0, y1 - 4));
      label.dataset.block = index;
      label.classList.add("label");
      label.textContent = block.label;
      svg.append(rect, label);
    }
  });
  return svg;
}

function highlight(view, index, on) {
  view.querySelectorAll(`[data-block="${index}"]`).forEach((node) => node.classList.toggle("hot", on));
}

function pageCard(entry, base) {
  const title = entry.page ? `Page ${entry.page}` : "Page";
  const view = byId("page-card").content.firstElementChild.cloneNode(true);
  view.querySelector(".title").textContent = title;
  view.querySelector(".status").textContent = entry.status;
  view.dataset.status = entry.status;
  view.dataset.key = entry.page ? `page-${entry.page}` : "page";
  if (entry.status === "failed") {
    view.querySelector(".views").replaceChildren(`${entry.error} (${entry.code})`);
    return view;
  }
  const stage = view.querySelector(".stage");
  const shown = (src) => {
    if (!src) return;
    stage.querySelector("img").src = src;
    view.querySelector(".page-download").replaceChildren(download(`${base}-${view.dataset.key}.png`, src));
  };
  // /ocr gives the annotated page inline; a job, a link (fetched now that the page is shown).
  if (entry.annotated_image) shown(entry.annotated_image);
  else if (entry.annotated_image_url) picture(entry.annotated_image_url).then(shown);
  const [width, height] = entry.image ? [entry.image.width, entry.image.height] : [entry.width, entry.height];
  stage.append(overlay(entry.blocks, width, height));
  view.querySelector(".markdown").innerHTML = renderMarkdown(entry.markdown);
  for (const figure of entry.figures || []) {  // figures=true: the image regions, cropped by the service
    const image = document.createElement("img");
    image.alt = `figure ${figure.figure}`;
    image.className = "figure";
    if (figure.image) image.src = figure.image;
    else picture(figure.image_url).then((src) => { image.src = src; });
    view.querySelector(".markdown").append(image);
  }
  const list = view.querySelector(".blocks");
  entry.blocks.forEach((block, index) => {
    const item = document.createElement("li");
    item.dataset.block = index;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = block.label;
    item.append(label, " ", block.text);
    list.append(item);
  });
  view.querySelector(".raw").textContent = entry.raw_output;
  const hover = (on) => (event) => {
    const index = event.target.closest("[data-block]")?.dataset.block;
    if (index !== undefined) highlight(view, index, on);
  };
  view.addEventListener("mouseover", hover(true));
  view.addEventListener("mouseout", hover(false));
  view.querySelectorAll(".tabs button").forEach((button) =>
    button.addEventListener("click", () => {
      view.querySelectorAll(".tabs button").forEach((other) => other.classList.toggle("on", other === button));
      view.querySelectorAll(".view").forEach((pane) => {
        pane.hidden = !pane.classList.contains(button.dataset.view);
      });
    }),
  );
  return view;
}

async function readImage(file, card) {
  setState(card, "reading");
  const { data } = await call("POST", "/ocr", requestFields(file));
  addEntry(card, data);
  setState(card, "done", 1, 1);
  offerDownloads(card, data);
}

async function readJob(file, card) {
  setState(card, "queued", 0, 1);
  const { data: job } = await call("POST", "/jobs", requestFields(file, true));
  card.dataset.job = job.id;
  let after = 0;
  const notice = card.querySelector(".notice");
  for (;;) {
    const { data: batch } = await call("GET", `/jobs/${job.id}/pages?after=${after}`);
    for (const page of batch.pages) addEntry(card, page);
    after = batch.next_after;
    setState(card, batch.status, batch.pages_ready, batch.pages_total);
    // Why it waits, when it does (the engine down: the job is queued again and retried).
    const error = batch.error;
    notice.hidden = !error;
    if (error) notice.textContent = `${error.error} (${error.code})${error.retrying ? "; it will be tried again" : ""}`;
    if (FINISHED.includes(batch.status) && after >= batch.pages_ready) break;
    if (!batch.pages.length) await sleep(POLL_MS);
  }
  const { data: result } = await call("GET", `/jobs/${job.id}/result`);
  if (result.image) {
    card.querySelectorAll("svg[data-pending]").forEach((svg) => {
      svg.setAttribute("viewBox", `0 0 ${result.image.width} ${result.image.height}`);
    });
  }
  setState(card, "done", after, Math.max(after, 1));
  offerDownloads(card, result);
  if (job.urls.result_pdf) offerSearchablePdf(card, job.urls.result_pdf);
}

// The job's searchable PDF: fetched with the key when clicked (a book's PDF is not held by the page until asked).
function offerSearchablePdf(card, url) {
  const link = download(`${baseName(card)}-searchable.pdf`, "#");
  link.addEventListener("click", async (event) => {
    if (link.href.startsWith("blob:")) return; // fetched: the browser saves it
    event.preventDefault();
    const response = await fetch(url, { headers: authorization() });
    if (!response.ok) {
      showError(card, new ApiError(response.status, await response.json().catch(() => null)));
      return;
    }
    link.href = URL.createObjectURL(await response.blob());
    link.click();
  });
  card.querySelector(".downloads").append(" ", link);
}

async function readAll(files) {
  const queue = [...files];
  const worker = async () => {
    for (let file = queue.shift(); file; file = queue.shift()) {
      const card = fileCard(file);
      try {
        await (asJob(file) ? readJob(file, card) : readImage(file, card));
      } catch (error) {
        showError(card, error);
      }
    }
  };
  await Promise.all(Array.from({ length: FILES_AT_ONCE }, worker));
}

function describeChoice() {
  const files = [...byId("files").files];
  if (files.length) byId("form-message").hidden = true;
  byId("chosen").textContent = files.length ? files.map((file) => file.name).join(", ") : "";
}

byId("task").addEventListener("change", () => {
  byId("phrase-field").hidden = byId("task").value !== "locate";
});
byId("files").addEventListener("change", describeChoice);
const drop = byId("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  byId("files").files = event.dataTransfer.files;
  describeChoice();
});
byId("ocr-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const files = [...byId("files").files];
  const message = byId("form-message");
  message.hidden = files.length > 0;
  if (!files.length) {
    message.textContent = "Choose one or more images or PDFs first (or drop them on the box above).";
    document.body.dataset.finished = String(Date.now());
    return;
  }
  byId("run").disabled = true;
  byId("results").replaceChildren();
  try {
    await readAll(files);
  } finally {
    byId("run").disabled = false;
    document.body.dataset.finished = String(Date.now()); // tests wait for this
  }
});
document.body.dataset.ready = "true";
