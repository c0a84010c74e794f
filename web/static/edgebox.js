// EdgeBox's only script: regions marked data-live="URL" are re-fetched every data-every seconds
// and swapped in place, so a dashboard left open in a cab stays current; a tap on a recording's
// thumbnail strip seeks its video there. Every page works without it; the server renders the
// same HTML for the first load and for each refresh, and the words come from the page (in the
// reader's language).
"use strict";

function clock(date) {
  return date.toLocaleTimeString(document.documentElement.lang || [], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function keepLive(region) {
  const url = region.dataset.live;
  const every = Math.max(1, Number(region.dataset.every) || 5) * 1000;
  const note = document.getElementById(`${region.id}-note`);
  let lastGood = new Date();
  let stopped = false;

  function words(name, fallback, time = "") {
    return ((note && note.dataset[name]) || fallback).replace("{time}", time);
  }

  function say(text) {
    if (note) {
      note.hidden = false;
      note.textContent = text;
    }
  }

  async function refresh() {
    // A hidden tab costs the box nothing; a focused control inside is not yanked away.
    if (document.hidden || region.contains(document.activeElement)) return;
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "text/html" },
      });
      if (response.redirected || response.status === 401 || response.status === 403) {
        stopped = true;
        say(words("ended", "Your session has ended: reload the page to log in again."));
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      region.setAttribute("aria-busy", "true");
      region.replaceChildren(...doc.body.childNodes);
      region.removeAttribute("aria-busy");
      lastGood = new Date();
      region.dataset.refreshed = String(Number(region.dataset.refreshed || 0) + 1);
      say(words("updated", "Live: updated {time}.", clock(lastGood)));
    } catch (error) {
      say(`${words("stale", "Not updated since {time}: the box did not answer.", clock(lastGood))} (${error.message})`);
    }
  }

  async function loop() {
    while (!stopped) {
      await new Promise((resolve) => setTimeout(resolve, every));
      await refresh();
    }
  }

  say(words("updated", "Live: updated {time}.", clock(lastGood)));
  loop();
}

function seekFromStrip(strip) {
  const video = document.getElementById("player");
  const seconds = Number(strip.dataset.seconds);
  if (!video || !seconds) return;
  const columns = Number(strip.dataset.columns) || 1;
  const rows = Number(strip.dataset.rows) || 1;
  const image = strip.querySelector("img");
  image.addEventListener("click", (event) => {
    // The strip is a grid of tiles read like text; a tap plays from the tile's moment.
    const box = image.getBoundingClientRect();
    const column = Math.min(columns - 1, Math.floor(((event.clientX - box.left) / box.width) * columns));
    const row = Math.min(rows - 1, Math.floor(((event.clientY - box.top) / box.height) * rows));
    video.currentTime = ((row * columns + column) / (columns * rows)) * seconds;
  });
}

document.querySelectorAll("[data-live]").forEach(keepLive);
document.querySelectorAll(".strip[data-seconds]").forEach(seekFromStrip);
