// EdgeBox's only script: regions marked data-live="URL" are re-fetched every data-every seconds
// and swapped in place, so a dashboard left open in a cab stays current. Every page works
// without it; the server renders the same HTML for the first load and for each refresh.
"use strict";

function clock(date) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function keepLive(region) {
  const url = region.dataset.live;
  const every = Math.max(1, Number(region.dataset.every) || 5) * 1000;
  const note = document.getElementById(`${region.id}-note`);
  let lastGood = new Date();
  let stopped = false;

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
        say("Your session has ended: reload the page to log in again.");
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      region.setAttribute("aria-busy", "true");
      region.replaceChildren(...doc.body.childNodes);
      region.removeAttribute("aria-busy");
      lastGood = new Date();
      region.dataset.refreshed = String(Number(region.dataset.refreshed || 0) + 1);
      say(`Live: updated ${clock(lastGood)}.`);
    } catch (error) {
      say(`Not updated since ${clock(lastGood)}: the box did not answer (${error.message}).`);
    }
  }

  async function loop() {
    while (!stopped) {
      await new Promise((resolve) => setTimeout(resolve, every));
      await refresh();
    }
  }

  say(`Live: updated ${clock(lastGood)}.`);
  loop();
}

document.querySelectorAll("[data-live]").forEach(keepLive);
