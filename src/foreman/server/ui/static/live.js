// The run page follows its run's events (GET /ui/runs/:id/events, Server-Sent Events): each one
// fires "run-event", on which htmx reloads the page's live part (#live's hx-trigger). The browser's
// EventSource reconnects by itself, with the last event's id. No polling.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !live.dataset.events || !window.EventSource) {
    return;
  }
  var source = new EventSource(live.dataset.events);
  function changed(message) {
    if (message.lastEventId) {
      document.body.dataset.lastEvent = message.lastEventId;
    }
    document.body.dispatchEvent(new Event("run-event"));
  }
  source.onmessage = changed;
  source.addEventListener("end", function (message) {
    source.close(); // the run and its tasks have ended: nothing more will come
    document.body.dataset.streamEnded = "true";
    changed(message);
  });
})();
