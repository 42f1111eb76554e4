// One /v1/stream session over a WebSocket (docs/protocol.md): `start`, then JSON frames both ways.

// What a person should read when the server closes the connection with one of these codes.
const CLOSE_REASONS = {
  1001: "The server is shutting down",
  1006: "The connection to the server was lost",
  1008: "The server refused the connection",
  1009: "A message was too large for the server",
  1011: "The server hit an internal error",
  1012: "The server is restarting",
  1013: "The server is full (every session slot is in use); try again later",
};

export function closeMessage(code, reason) {
  const what = CLOSE_REASONS[code] || `The connection closed (code ${code})`;
  return reason ? `${what}: ${reason}` : what;
}

export function streamUrl(apiKey) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const key = apiKey ? `?api_key=${encodeURIComponent(apiKey)}` : "";
  return `${scheme}://${location.host}/v1/stream${key}`;
}

export class Stream {
  // handlers: onReady(frame), onEvents(events, frame), onServerError(frame), onEnd(frame),
  //           onClose(code, reason, wasStopped)
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.ws = null;
    this.stopping = false;
  }

  open(start) {
    this.ws = new WebSocket(this.url);
    this.ws.onopen = () => this.send({ type: "start", ...start });
    this.ws.onmessage = (m) => this.receive(JSON.parse(m.data));
    this.ws.onclose = (e) => this.handlers.onClose(e.code, e.reason, this.stopping);
  }

  receive(frame) {
    const h = this.handlers;
    if (frame.type === "ready") h.onReady(frame);
    else if (frame.type === "events") h.onEvents(frame.events, frame);
    else if (frame.type === "error") h.onServerError(frame);
    else if (frame.type === "end") h.onEnd(frame);
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  send(message) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  // The polite end: `stop`, then the server's `end` and close.
  stop() {
    this.stopping = true;
    if (!this.send({ type: "stop" })) this.close();
  }

  // Hang up at once (no session to stop).
  close() {
    this.stopping = true;
    if (this.ws) this.ws.close();
  }
}
