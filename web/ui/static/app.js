// The picker page: generate four images, pick one, refine it. Plain JavaScript against the service's API.
"use strict";

const KEY_STORAGE = "aig-api-key";
const $ = (id) => document.getElementById(id);
let models = [];
let picked = null; // {key, url, prompt, folder}
let historyPage = 1;
const POLL_MS = 500; // how often a running job is asked about
const QUEUED_NOTICE_MS = 10000; // a job still queued this long: say that no worker has taken it yet

function headers() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  const sent = { "Content-Type": "application/json" };
  if (key) sent.Authorization = "Bearer " + key;
  return sent;
}

// One call to the API; a 401 asks for the key, any other error is shown in plain words.
async function api(method, path, body) {
  const response = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) {
    askForKey();
    throw new Error("This service needs an API key: enter it above and try again.");
  }
  if (!response.ok) throw new Error(explain(answer, response.status));
  return answer;
}

// A problem answer in plain words: each field and what to change.
function explain(problem, status) {
  const fields = (problem.errors || []).map((e) => `${label(e.field)}: ${e.message}.`);
  if (fields.length) return fields.join(" ");
  return (problem.detail || problem.title || `The service answered ${status}.`) + ".";
}

function label(field) {
  const names = { prompt: "Prompt", negative_prompt: "Negative prompt", output_folder: "Folder", count: "Count",
                  seed: "Seed", width: "Size", height: "Size", aspect_ratio: "Size", model: "Model",
                  body: "Request", folder: "Folder" };
  return names[field] || field;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  box.focus();
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function askForKey() {
  $("key-form").hidden = false;
  $("api-key").focus();
}

// A progress line with the seconds elapsed, until `stop` is called.
function progress(what) {
  const started = Date.now();
  const tick = () => { $("status").textContent = `${what}… ${Math.round((Date.now() - started) / 1000)} s`; };
  tick();
  const timer = setInterval(tick, 500);
  return (done) => { clearInterval(timer); $("status").textContent = done; };
}

async function loadModels() {
  try {
    const answer = await api("GET", "/models");
    models = answer.models.filter((m) => m.tasks.includes("text_to_image"));
    $("model").replaceChildren(...models.map((m) => new Option(`${m.name}${m.available ? "" : " (unavailable)"}`, m.id)));
    $("model").value = answer.default;
    $("offline-notice").hidden = !models.some((m) => m.placeholder);
    fillSizes();
  } catch (error) {
    showError(error.message);
  }
}

function fillSizes() {
  const model = models.find((m) => m.id === $("model").value);
  if (!model) return;
  const choices = model.limits.sizes || model.limits.aspect_ratios || [];
  $("size").replaceChildren(...choices.map((s) => new Option(s, s)));
  if (choices.includes("1024x1024")) $("size").value = "1024x1024";
}

function sizeFields() {
  const value = $("size").value;
  if (!value) return {};
  if (value.includes("x")) {
    const [width, height] = value.split("x").map(Number);
    return { width, height };
  }
  return { aspect_ratio: value };
}

function figure(detail, prompt, onPick) {
  const item = document.createElement("figure");
  const image = document.createElement("img");
  image.src = detail.url;
  image.alt = `${prompt} (seed ${detail.seed})`;
  image.width = detail.width;
  image.height = detail.height;
  const caption = document.createElement("figcaption");
  const verdict = detail.moderation.verdict;
  const badge = document.createElement("span");
  badge.className = "badge" + (verdict === "flagged" ? " flagged" : verdict === "not_screened" ? " unscreened" : "");
  badge.textContent = verdict === "flagged" ? "flagged: blurred" : verdict === "clean" ? "screened: clean" : "not screened";
  caption.append(`seed ${detail.seed} · ${detail.width}×${detail.height} `, badge);
  item.append(image, caption);
  if (onPick) {
    const pick = document.createElement("button");
    pick.type = "button";
    pick.className = "pick";
    pick.textContent = "Pick this one";
    pick.setAttribute("aria-label", `Pick the image with seed ${detail.seed}`);
    pick.addEventListener("click", () => onPick(detail));
    item.append(pick);
  }
  return item;
}

async function generate(event) {
  event.preventDefault();
  clearError();
  const prompt = $("prompt").value;
  const body = { prompt, output_folder: $("folder").value, file_name_prefix: "ui", count: Number($("count").value),
                 model: $("model").value, ...sizeFields() };
  if ($("negative-prompt").value) body.negative_prompt = $("negative-prompt").value;
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  $("generate").disabled = true;
  const stop = progress("Generating");
  try {
    // A job, not one long request: each image is shown as soon as it is stored, and a dropped
    // connection loses nothing (the job goes on; the page asks again).
    const shown = new Set();
    const show = (details) => {
      for (const detail of details || []) {
        if (shown.has(detail.key)) continue;
        shown.add(detail.key);
        $("results").append(figure(detail, prompt, (d) => pick(d, prompt)));
      }
    };
    $("results").replaceChildren();
    let job = await api("POST", "/jobs", body);
    const started = Date.now();
    while (job.state === "queued" || job.state === "running") {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      job = await api("GET", job.links.self);
      show(job.stored_images);
      if (job.state === "queued" && Date.now() - started > QUEUED_NOTICE_MS) {
        $("status").textContent = "Queued: waiting for a job worker to start it…";
      }
    }
    if (!job.manifest || !job.manifest.images.length) throw new Error(explain(job.error || {}, job.state));
    show(job.manifest.image_details);
    const missing = job.state === "partial" ? ` ${job.manifest.errors.length || "Some"} could not be made.` : "";
    stop(`${job.manifest.images.length} image(s) stored in ${body.output_folder}.${missing}`);
    $("results-heading").focus();
    loadHistory(1);
  } catch (error) {
    stop("");
    showError(error.message);
  } finally {
    $("generate").disabled = false;
  }
}

function pick(detail, prompt) {
  picked = { ...detail, prompt, folder: $("folder").value };
  $("picked").hidden = false;
  $("picked-figure").replaceChildren(figure(detail, prompt));
  $("open").href = detail.url;
  $("download").href = detail.url;
  $("download").setAttribute("download", detail.key.split("/").pop());
  $("derived").replaceChildren();
  $("picked-heading").focus();
}

async function refine(fields, what) {
  if (!picked) return;
  clearError();
  const stop = progress(what);
  try {
    const manifest = await api("POST", "/edit_images", { source_key: picked.key, output_folder: picked.folder,
                                                          file_name_prefix: "ui-edit", count: 2, ...fields });
    // Derived images keep a prompt a person wrote, so "more like this" on them still means something.
    const label = fields.prompt || picked.prompt;
    $("derived").prepend(...manifest.image_details.map((d) => figure(d, label, (detail) => pick(detail, label))));
    stop(`${what}: ${manifest.images.length} image(s) made from the picked one.`);
    $("derived-heading").focus();
    loadHistory(1);
  } catch (error) {
    stop("");
    showError(error.message);
  }
}

async function copyAddress() {
  const address = picked.s3_uri || picked.url;
  try {
    await navigator.clipboard.writeText(address);
    $("status").textContent = "Address copied.";
  } catch {
    $("status").textContent = `Address: ${address}`;
  }
}

async function loadHistory(page) {
  const folder = $("history-folder").value;
  try {
    const answer = await api("GET", `/records?folder=${encodeURIComponent(folder)}&page=${page}`);
    historyPage = answer.page;
    $("history").replaceChildren(...answer.records.map((record) => {
      const item = document.createElement("li");
      const when = record.finished_at ? new Date(record.finished_at * 1000).toLocaleString() : "";
      item.append(`${when} · ${record.task} · ${record.prompt || ""} · ${record.status}`);
      const thumbs = document.createElement("div");
      thumbs.className = "thumbs";
      for (const image of record.images) {
        const thumb = document.createElement("img");
        thumb.src = image.url;
        thumb.alt = `${record.prompt || record.task} (seed ${image.seed})`;
        thumbs.append(thumb);
      }
      item.append(thumbs);
      return item;
    }));
    $("history-prev").disabled = historyPage <= 1;
    $("history-next").disabled = answer.next_page === null;
  } catch (error) {
    showError(error.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("generate-form").addEventListener("submit", generate);
  $("model").addEventListener("change", fillSizes);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value);
    $("key-form").hidden = true;
    clearError();
    loadModels();
    $("prompt").focus();
  });
  $("more").addEventListener("click", () => refine({ task: "variation", prompt: picked.prompt }, "More like this"));
  // "Change what into what": search-and-replace, which today's models do from words alone (no mask).
  $("edit").addEventListener("click", () => refine({ task: "search_replace", search_prompt: $("edit-what").value,
                                                     prompt: $("edit-into").value }, "Editing"));
  // One cut-out is enough: the task takes no seed, so a second would be the same picture, paid again.
  $("remove-background").addEventListener("click", () => refine({ task: "remove_background", count: 1 },
                                                                 "Removing the background"));
  $("copy").addEventListener("click", copyAddress);
  $("history-form").addEventListener("submit", (event) => { event.preventDefault(); loadHistory(1); });
  $("history-prev").addEventListener("click", () => loadHistory(historyPage - 1));
  $("history-next").addEventListener("click", () => loadHistory(historyPage + 1));
  loadModels();
  loadHistory(1);
});
