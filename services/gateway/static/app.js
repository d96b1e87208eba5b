// DyRef gateway page: no build step. Reads reference files as data URLs (the API accepts them as
// base64), posts JSON to /v1/generations and shows images, policy version, timings, or the API's error.
"use strict";
const $ = (id) => document.getElementById(id);

function addRef() {
  const row = $("ref-row").content.firstElementChild.cloneNode(true);
  const file = row.querySelector(".ref-file");
  file.addEventListener("change", () => {
    const f = file.files[0];
    if (f) row.querySelector(".ref-preview").src = URL.createObjectURL(f);
  });
  row.querySelector(".ref-remove").addEventListener("click", () => row.remove());
  $("refs").appendChild(row);
  return row;
}

function readDataURL(f) {
  return new Promise((ok, fail) => {
    const r = new FileReader();
    r.onload = () => ok(r.result);
    r.onerror = () => fail(r.error);
    r.readAsDataURL(f);
  });
}

function num(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function showError(err) {
  const box = $("error");
  box.textContent = err.param ? `${err.message}\n(field: ${err.param}, code: ${err.code})` : `${err.message} (code: ${err.code})`;
  box.style.display = "block";
}

async function generate() {
  $("error").style.display = "none";
  $("images").innerHTML = "";
  $("meta").innerHTML = "";
  $("status").textContent = "generating…";
  try {
    const refs = [];
    for (const row of $("refs").querySelectorAll(".ref")) {
      const f = row.querySelector(".ref-file").files[0];
      if (!f) continue;
      refs.push({ role: row.querySelector(".ref-role").value, image: await readDataURL(f) });
    }
    const body = { prompt: $("prompt").value, references: refs };
    for (const [k, id] of [["n", "n"], ["width", "width"], ["height", "height"], ["num_inference_steps", "steps"], ["seed", "seed"]]) {
      const v = num(id);
      if (v !== null) body[k] = v;
    }
    const headers = { "Content-Type": "application/json" };
    const key = $("apikey").value.trim();
    if (key) headers["Authorization"] = "Bearer " + key;
    const t0 = performance.now();
    const resp = await fetch("/v1/generations", { method: "POST", headers, body: JSON.stringify(body) });
    const data = await resp.json();
    if (!resp.ok) {
      showError(data.error || { message: `HTTP ${resp.status}`, code: "http_error" });
      $("status").textContent = `failed (HTTP ${resp.status})`;
      return;
    }
    for (const im of data.images) {
      const img = document.createElement("img");
      img.src = `data:image/${im.format || "png"};base64,${im.b64_json}`;
      img.title = `seed ${im.seed}, image ${im.index}, ${im.width}x${im.height}`;
      img.className = "result";
      $("images").appendChild(img);
    }
    const version = data.policy_version === null ? "initial (none published)" : data.policy_version;
    const rows = [["policy version", version],
                  ["request id", data.id], ["round trip (browser)", `${((performance.now() - t0) / 1000).toFixed(3)} s`]];
    for (const [k, v] of Object.entries(data.timings || {})) rows.push([k, k.endsWith("_s") ? `${v.toFixed(4)} s` : v]);
    $("meta").innerHTML = "<table>" + rows.map(([k, v]) => `<tr><td>${k}</td><td class="v" data-k="${k}">${v}</td></tr>`).join("") + "</table>";
    $("status").textContent = `done: ${data.images.length} image(s), policy version ${version}`;
  } catch (e) {
    showError({ message: String(e), code: "client_error" });
    $("status").textContent = "failed";
  }
}

$("add-ref").addEventListener("click", addRef);
$("generate").addEventListener("click", generate);
addRef();
