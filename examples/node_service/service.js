// The inventory service of the order saga, in JavaScript (Node's standard library only).
//
// It is a saga participant and a projection through its kct sidecar:
//   POST /kct/saga/inventory   a saga command (CloudEvents 1.0 JSON): reserve or release
//                              stock, answered with the step's outcome and the read-model
//                              changes the sidecar applies once, with the step's record;
//   POST /kct/projections/board a saga reply or start (CloudEvents): answered with the
//                              changes to its read model (a board of sagas by outcome).
// It reads its stock through the sidecar's HTTP API (GET /v1/read-models/...).
//
// Environment: PORT (0: any free port; the chosen one is printed), KCT_SIDECAR_URL,
// KCT_READ_MODEL (the participant's read model, e.g. "inventory"), KCT_SIDECAR_TOKEN.
"use strict";

const http = require("node:http");

const sidecar = new URL(process.env.KCT_SIDECAR_URL || "http://127.0.0.1:8787");
const readModel = process.env.KCT_READ_MODEL || "inventory";
const token = process.env.KCT_SIDECAR_TOKEN || "";

function askSidecar(path) {
  return new Promise((resolve, reject) => {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const request = http.get(new URL(path, sidecar), { headers }, (response) => {
      const chunks = [];
      response.on("data", (chunk) => chunks.push(chunk));
      response.on("end", () => {
        const body = Buffer.concat(chunks).toString();
        if (response.statusCode === 404) return resolve(null);
        if (response.statusCode !== 200) return reject(new Error(`sidecar ${response.statusCode}`));
        resolve(JSON.parse(body));
      });
    });
    request.on("error", reject);
  });
}

async function stock(sku) {
  const key = encodeURIComponent(`stock:${sku}`);
  const found = await askSidecar(`/v1/read-models/${readModel}/documents/${key}`);
  return found ? found.document : { available: 0 };
}

async function sagaCommand(event) {
  const { name, context, saga_id: sagaId } = event.data;
  const sku = context.sku;
  const quantity = parseInt(context.quantity, 10);
  const current = await stock(sku);
  if (name === "reserve_inventory") {
    if (current.available < quantity) {
      return { outcome: "failure", error: `out of stock: ${sku} has ${current.available}, ${quantity} wanted` };
    }
    return {
      outcome: "success",
      context: { reservation: `${sagaId}:${sku}:${quantity}`, reserved_by: "node" },
      changes: [
        { op: "put", key: `stock:${sku}`, document: { available: current.available - quantity } },
        { op: "increment", key: "reserved", field: sku, amount: quantity },
        { op: "increment", key: "moves", field: "reservations" },
      ],
    };
  }
  if (name === "release_inventory") {
    return {
      outcome: "success",
      changes: [
        { op: "put", key: `stock:${sku}`, document: { available: current.available + quantity } },
        { op: "increment", key: "reserved", field: sku, amount: -quantity },
        { op: "increment", key: "moves", field: "releases" },
      ],
    };
  }
  return { outcome: "failure", error: `unknown action ${name}` };
}

function boardEvent(event) {
  const data = event.data;
  if (event.type === "kct.saga.SagaStarted") {
    return { changes: [{ op: "merge", key: `saga:${data.saga_id}`, document: { started: true } }] };
  }
  // kct.saga.SagaReply: count each step's outcome once (the sidecar applies each event once)
  const field = `${data.step}.${data.action}.${data.outcome}`;
  return {
    changes: [
      { op: "increment", key: "replies", field, amount: 1 },
      { op: "merge", key: `saga:${data.saga_id}`, document: { last: field } },
    ],
  };
}

const routes = { "/kct/saga/inventory": sagaCommand, "/kct/projections/board": boardEvent };

const server = http.createServer((request, response) => {
  const handler = routes[request.url];
  if (request.method !== "POST" || !handler) {
    response.writeHead(404).end();
    return;
  }
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", async () => {
    let answer;
    try {
      answer = await handler(JSON.parse(Buffer.concat(chunks).toString()));
    } catch (error) {
      // 503: the sidecar retries, then pauses the partition; it never skips the event
      response.writeHead(503, { "Content-Type": "application/json" });
      response.end(JSON.stringify({ error: String(error.message || error) }));
      return;
    }
    response.writeHead(200, { "Content-Type": "application/json" });
    response.end(JSON.stringify(answer));
  });
});

server.listen(parseInt(process.env.PORT || "8080", 10), "127.0.0.1", () => {
  console.log(`node service listening on ${server.address().port}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => server.close(() => process.exit(0)));
