// The storg status page: polls /api/status of the node that served it, once a second,
// and redraws.  No framework, no CDN: this file is all the script there is.
"use strict";

const POLL_MS = 1000;
let lastOk = 0;

function el(id) { return document.getElementById(id); }

function text(node, value) { node.textContent = value === null || value === undefined ? "–" : String(value); }

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 1) return "now";
  if (seconds < 90) return Math.round(seconds) + " s ago";
  return Math.round(seconds / 60) + " min ago";
}

function cell(row, value, cls) {
  const td = document.createElement("td");
  text(td, value);
  if (cls) td.className = cls;
  row.appendChild(td);
}

function drawMembers(status) {
  const body = el("members").querySelector("tbody");
  body.replaceChildren();
  for (const m of status.members) {
    const tr = document.createElement("tr");
    tr.dataset.id = m.id;
    tr.dataset.role = m.role;
    tr.className = (m.reachable ? "" : "unreachable") + (m.id === status.node ? " self" : "");
    if (m.error) tr.title = m.error;
    cell(tr, m.id + (m.voter ? "" : " (learner)"));
    cell(tr, m.role, "role role-" + m.role);
    cell(tr, m.term);
    cell(tr, m.commit_index);
    cell(tr, m.applied_index);
    cell(tr, m.lag);
    cell(tr, m.reachable ? ago(m.last_contact_seconds) : "unreachable (" + ago(m.last_contact_seconds) + ")");
    cell(tr, bytes(m.held_bytes));
    body.appendChild(tr);
  }
}

function drawFacts(status) {
  const r = status.replication, d = status.disk;
  const facts = [
    ["Files", r.files], ["File bytes", bytes(r.bytes)], ["Chunks", r.chunks],
    ["Under-replicated chunks", r.under_replicated + " (" + r.counted_by + ")"],
    ["Chunks with no reachable copy", r.lost === null ? "– (counted by the leader)" : r.lost],
    ["Repair queue", r.repair_queue === null ? "– (on the leader)" : r.repair_queue + " chunks"],
    ["Repair copies made", r.repair_copies + " (" + bytes(r.repair_bytes) + ")"],
    ["Scrub passes", r.scrub_passes + (r.scrub_running ? " (running)" : "")],
    ["Bad copies found", r.bad_copies],
    ["This node's free space", bytes(d.free_bytes) + (d.full ? " — below the reserve: puts refused" : "")],
    ["Disk reserve", bytes(d.reserve_bytes)], ["Raft log", bytes(d.wal_bytes)],
  ];
  const dl = el("replication");
  dl.replaceChildren();
  for (const [k, v] of facts) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    text(dt, k); text(dd, v);
    dd.dataset.fact = k;
    dl.append(dt, dd);
  }
}

function drawHistory(status) {
  const ol = el("history");
  ol.replaceChildren();
  for (const h of status.leader_history) {
    const li = document.createElement("li");
    const when = new Date(h.time * 1000).toLocaleTimeString();
    text(li, when + " — term " + h.term + ": " + (h.leader || "no leader") + " (" + h.reason + ")");
    ol.appendChild(li);
  }
}

function draw(status) {
  text(el("viewed-from"), "seen from " + status.node);
  const health = el("health");
  text(health, status.health);
  health.className = "big " + status.health;
  text(el("leader"), status.leader || "none");
  text(el("term"), "term " + status.term);
  text(el("tolerance"), status.health === "unavailable" ? "0" :
    status.failure_tolerance + (status.failure_tolerance === 1 ? " node" : " nodes"));
  text(el("quorum"), status.reachable_voters + " of " + status.voters + " voters reachable, quorum " + status.quorum);
  const cut = el("cutoff");
  cut.hidden = !status.cut_off;
  text(cut, status.cut_off ? status.node + " is cut off: it hears no other member and knows no leader. " +
    "The cluster may be fine; this is only what " + status.node + " sees." : "");
  drawMembers(status);
  drawFacts(status);
  drawHistory(status);
  document.body.dataset.health = status.health;
  document.body.dataset.leader = status.leader || "";
}

async function poll() {
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    draw(await response.json());
    lastOk = Date.now();
    el("stale").hidden = true;
    text(el("updated"), "updated " + new Date().toLocaleTimeString());
  } catch (err) {
    el("stale").hidden = lastOk === 0 ? false : Date.now() - lastOk < 3 * POLL_MS;
    if (lastOk === 0) text(el("viewed-from"), "cannot reach the node: " + err.message);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
