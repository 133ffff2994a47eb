// The page: a form for one song, its progress from the job's server-sent events, a player with
// a waveform drawn from the decoded audio, and the server's job list. Plain ES module, no build.
// Every URL is relative to the page, so that it also works behind a proxy under a prefix (/music/).
const $ = (id) => document.getElementById(id);
const KEY_STORE = "acestep-ggml-api-key";
const SOURCE_TASKS = ["cover", "cover-nofsq", "repaint", "extract", "lego", "complete"];
const COVER_TASKS = ["cover", "cover-nofsq"];
const KEYS = [];
for (const n of "ABCDEFG") for (const a of ["", "#", "b"]) for (const m of ["major", "minor"]) KEYS.push(`${n}${a} ${m}`);
const LANGUAGES = ["en", "zh", "ja", "ko", "es", "fr", "de", "it", "pt", "ru", "unknown"];

// What the page has seen, for people and for tests: every percentage the events carried.
window.progressLog = [];
let props = null;
let current = null; // {id, url} of the song in the player

// -- the API ------------------------------------------------------------------------------------
function headers(extra = {}) {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (response.status === 401) {
    askKey();
    throw new Error("this server needs an API key");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function askKey() {
  $("key-button").hidden = false;
  if (!$("key-dialog").open) $("key-dialog").showModal();
}

// Follows a job's server-sent events (fetch, so the API key travels in a header) until it ends.
async function follow(id, label) {
  const response = await api(`job/events?id=${encodeURIComponent(id)}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
      if (!data) continue;
      last = JSON.parse(data);
      showProgress(last, label);
    }
  }
  if (!last || last.state !== "done") {
    throw new Error(last && last.state === "failed" ? `failed: ${last.error}` : `job ${id} ${last ? last.state : "lost"}`);
  }
  return last;
}

function showProgress(status, label) {
  $("progress").value = status.progress;
  window.progressLog.push(status.progress);
  const where = status.state === "queued" ? `waiting (${status.position} in line)`
    : status.stage ? `${status.stage}${status.total ? ` ${status.done}/${status.total}` : status.done ? ` ${status.done}` : ""}`
    : status.state;
  $("stage").textContent = `${label}: ${where} — ${status.progress.toFixed(0)}%`;
}

// -- the form -----------------------------------------------------------------------------------
function number(id) {
  const v = $(id).value.trim();
  return v === "" ? 0 : Number(v);
}

function request() {
  const task = $("task").value;
  const r = {
    caption: $("caption").value.trim(), lyrics: $("lyrics").value, duration: number("duration"), bpm: number("bpm"),
    keyscale: $("keyscale").value.trim(), timesignature: $("timesignature").value,
    vocal_language: $("language").value.trim(), task_type: task, seed: number("seed"),
    inference_steps: number("steps"), guidance_scale: number("guidance"), shift: number("shift"),
    synth_batch_size: Math.max(1, number("batch")), output_format: $("format").value,
    synth_model: $("synth-model").value, lm_model: $("lm-model").value, solver: $("solver").value,
  };
  if ($("adapter").value) {
    r.adapter = $("adapter").value;
    r.adapter_scale = number("adapter-scale");
  }
  if (task === "repaint" || task === "lego") {
    r.repainting_start = number("repaint-start");
    r.repainting_end = $("repaint-end").value.trim() === "" ? -1 : number("repaint-end");
  }
  if (["extract", "lego", "complete"].includes(task)) r.track = $("track").value.trim();
  if (COVER_TASKS.includes(task)) r.audio_cover_strength = Number($("cover-strength").value);
  return r;
}

function showTaskFields() {
  const task = $("task").value;
  const show = { source: SOURCE_TASKS.includes(task), window: task === "repaint" || task === "lego",
                 track: ["extract", "lego", "complete"].includes(task), cover: COVER_TASKS.includes(task),
                 lm: $("use-lm").checked };
  for (const el of document.querySelectorAll("[data-for]")) el.hidden = !show[el.dataset.for];
}

function postJson(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

async function generate(event) {
  event.preventDefault();
  const button = $("generate");
  $("message").hidden = true;
  button.disabled = true;
  window.progressLog = [];
  try {
    let req = request();
    const src = $("src-audio").files[0], ref = $("ref-audio").files[0];
    if (!req.caption && !["lego", "extract", "complete"].includes(req.task_type)) throw new Error("write a caption first");
    if ($("use-lm").checked && !src) {
      const { id } = await (await postJson("lm", req)).json();
      refreshJobs();
      await follow(id, "LM");
      const [written] = await (await api(`job?id=${id}&result=1`)).json();
      req = { ...req, ...written, lm_batch_size: 1 };
    }
    let response;
    if (src || ref) {
      const form = new FormData();
      form.append("request", JSON.stringify(req));
      if (src) form.append("audio", src);
      if (ref) form.append("ref_audio", ref);
      response = await api("synth", { method: "POST", body: form });
    } else {
      response = await postJson("synth", req);
    }
    const { id } = await response.json();
    refreshJobs();
    await follow(id, "synth");
    await play(id, 0);
  } catch (e) {
    $("message").textContent = e.message;
    $("message").hidden = false;
  } finally {
    button.disabled = false;
    refreshJobs();
  }
}

// -- understand: the LM reads a song; its answer fills the form ---------------------------------------
// The first part of acestep.cpp's multipart/mixed result (the JSON; the latents follow it).
function firstPart(bytes, boundary) {
  const text = new TextDecoder("latin1").decode(bytes); // one character per byte: indices are byte offsets
  const start = text.indexOf("\r\n\r\n", text.indexOf(`--${boundary}`)) + 4;
  const end = text.indexOf(`\r\n--${boundary}`, start);
  return new TextDecoder().decode(bytes.subarray(start, end));
}

async function understand() {
  const file = $("understand-audio").files[0];
  $("message").hidden = true;
  if (!file) { report(new Error("choose a song to understand")); return; }
  const button = $("understand");
  button.disabled = true;
  window.progressLog = [];
  try {
    const form = new FormData();
    form.append("audio", file);
    if ($("lm-model").value) form.append("request", JSON.stringify({ lm_model: $("lm-model").value }));
    const { id } = await (await api("understand", { method: "POST", body: form })).json();
    refreshJobs();
    await follow(id, "understand");
    const response = await api(`job?id=${id}&result=1`);
    const boundary = (response.headers.get("Content-Type") || "").match(/boundary=([^\s;]+)/)[1];
    const [song] = JSON.parse(firstPart(new Uint8Array(await response.arrayBuffer()), boundary));
    $("caption").value = song.caption;
    $("lyrics").value = song.lyrics;
    $("duration").value = song.duration || "";
    $("bpm").value = song.bpm || "";
    $("keyscale").value = song.keyscale;
    $("timesignature").value = song.timesignature;
    $("language").value = song.vocal_language;
    $("stage").textContent = "understand: the form holds the LM's reading of the song";
  } catch (e) {
    report(e);
  } finally {
    button.disabled = false;
    refreshJobs();
  }
}

// -- player and waveform ------------------------------------------------------------------------
let peaks = null;

async function play(id, index) {
  const response = await api(`job/audio?id=${encodeURIComponent(id)}&index=${index}`);
  const blob = await response.blob();
  if (current) URL.revokeObjectURL(current.url);
  current = { id, url: URL.createObjectURL(blob) };
  const player = $("player");
  player.src = current.url;
  const name = (response.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
  $("download").href = current.url;
  $("download").download = name ? name[1] : `acestep-${id}-${index}.wav`;
  $("download").hidden = false;
  const buffer = await decode(await blob.arrayBuffer());
  peaks = columnPeaks(buffer, 1200);
  $("waveform").dataset.seconds = buffer.duration.toFixed(3);
  $("track-info").textContent = `${buffer.duration.toFixed(2)} s at ${props ? props.sample_rate : buffer.sampleRate} Hz (job ${id})`;
  draw();
}

async function decode(bytes) {
  const context = new (window.AudioContext || window.webkitAudioContext)();
  try {
    return await context.decodeAudioData(bytes);
  } finally {
    context.close();
  }
}

// min and max of each of `columns` slices of the (channel-averaged) samples
function columnPeaks(buffer, columns) {
  const channels = Array.from({ length: buffer.numberOfChannels }, (_, c) => buffer.getChannelData(c));
  const n = buffer.length, out = new Float32Array(columns * 2);
  for (let c = 0; c < columns; c++) {
    let lo = 1, hi = -1;
    const start = Math.floor((c * n) / columns), end = Math.max(start + 1, Math.floor(((c + 1) * n) / columns));
    for (let i = start; i < end && i < n; i++) {
      let v = 0;
      for (const ch of channels) v += ch[i];
      v /= channels.length;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    out[2 * c] = lo; out[2 * c + 1] = hi;
  }
  return out;
}

function draw() {
  const canvas = $("waveform"), ratio = window.devicePixelRatio || 1;
  const width = Math.round(canvas.clientWidth * ratio), height = Math.round(canvas.clientHeight * ratio);
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  const g = canvas.getContext("2d"), style = getComputedStyle(document.documentElement);
  g.clearRect(0, 0, width, height);
  if (!peaks) return;
  const player = $("player"), columns = peaks.length / 2;
  const played = player.duration ? player.currentTime / player.duration : 0;
  for (let x = 0; x < width; x++) {
    const c = Math.min(columns - 1, Math.floor((x / width) * columns));
    const lo = peaks[2 * c], hi = peaks[2 * c + 1];
    g.fillStyle = x / width < played ? style.getPropertyValue("--wave-played") : style.getPropertyValue("--wave");
    const top = ((1 - hi) / 2) * height, bottom = ((1 - lo) / 2) * height;
    g.fillRect(x, top, 1, Math.max(1, bottom - top));
  }
}

function animate() {
  draw();
  if (!$("player").paused) requestAnimationFrame(animate);
}

// -- the job list -------------------------------------------------------------------------------
async function refreshJobs() {
  let jobs;
  try {
    jobs = await (await api("jobs")).json();
  } catch {
    return;
  }
  const list = $("jobs");
  list.replaceChildren(...jobs.slice(0, 20).map((job) => {
    const li = document.createElement("li");
    li.dataset.id = job.id;
    const text = document.createElement("div");
    const caption = document.createElement("div");
    caption.className = "caption";
    caption.textContent = `${job.kind}: ${(job.summary && job.summary.caption) || job.id}`;
    const state = document.createElement("div");
    state.className = `state ${job.state}`;
    state.textContent = job.state === "failed" ? `failed: ${job.error}` : job.state === "queued"
      ? `waiting (${job.position} in line)` : `${job.state} ${job.progress.toFixed(0)}%`;
    text.append(caption, state);
    const actions = document.createElement("div");
    actions.className = "actions";
    if (job.state === "queued" || job.state === "running") {
      actions.append(button("Cancel", async () => {
        await api(`job?id=${job.id}&cancel=1`, { method: "POST" });
        refreshJobs();
      }));
    }
    for (let i = 0; i < (job.tracks || 0) && job.kind !== "lm"; i++) {
      if (job.kind === "vae" && !job.summary.caption.endsWith("decode")) break;
      actions.append(button(job.tracks > 1 ? `Play ${i + 1}` : "Play", () => play(job.id, i).catch(report)));
    }
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = job.progress;
    li.append(text, actions, bar);
    return li;
  }));
}

function button(text, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", onclick);
  return b;
}

function report(e) {
  $("message").textContent = e.message;
  $("message").hidden = false;
}

// -- boot -----------------------------------------------------------------------------------------
function options(select, values, labels = values) {
  select.replaceChildren(...values.map((v, i) => new Option(labels[i], v)));
}

function setup() {
  $("keys").replaceChildren(...KEYS.map((k) => new Option(k)));
  $("languages").replaceChildren(...LANGUAGES.map((k) => new Option(k)));
  $("task").addEventListener("change", showTaskFields);
  $("use-lm").addEventListener("change", showTaskFields);
  $("cover-strength").addEventListener("input", () => { $("cover-strength-out").value = Number($("cover-strength").value).toFixed(2); });
  $("dice").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 32); });
  $("compose").addEventListener("submit", generate);
  $("understand").addEventListener("click", understand);
  $("key-button").addEventListener("click", askKey);
  $("key-dialog").addEventListener("close", () => {
    if ($("key-dialog").returnValue === "save") {
      localStorage.setItem(KEY_STORE, $("key-input").value);
      load();
    }
  });
  const player = $("player");
  player.addEventListener("play", animate);
  player.addEventListener("seeked", draw);
  player.addEventListener("timeupdate", draw);
  $("waveform").addEventListener("click", (e) => {
    if (!player.duration) return;
    const box = e.currentTarget.getBoundingClientRect();
    player.currentTime = ((e.clientX - box.left) / box.width) * player.duration;
  });
  window.addEventListener("resize", draw);
  showTaskFields();
  setInterval(refreshJobs, 3000);
  load();
}

async function load() {
  try {
    props = await (await api("props")).json();
  } catch (e) {
    $("server").textContent = `cannot reach the server: ${e.message}`;
    return;
  }
  $("server").textContent = `${props.version} · ${props.devices.map((d) => d.device).join(", ")} · `
    + `${props.sample_rate} Hz · ${props.is_turbo ? "turbo" : "base/SFT"} DiT`;
  options($("synth-model"), props.models.dit);
  options($("lm-model"), props.models.lm);
  options($("format"), props.output_formats);
  options($("adapter"), ["", ...props.adapters], ["none", ...props.adapters]);
  $("adapter").disabled = $("adapter-scale").disabled = props.adapters.length === 0;
  $("use-lm").disabled = props.models.lm.length === 0;
  $("use-lm").checked = props.models.lm.length > 0;
  $("understand").disabled = props.models.lm.length === 0;
  showTaskFields();
  refreshJobs();
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", setup);
} else {
  setup();
}
