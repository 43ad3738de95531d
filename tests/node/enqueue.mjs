// Enqueue refunds into refundq from Node, through door (b): a Celery message, with celery-node.
//   npm install celery-node@0.5.9
//   REFUNDQ_REDIS_URL=redis://127.0.0.1:6379/0 node enqueue.mjs
// Optional: CELERY_TASK_PROTOCOL (2, celery-node's default, or 1); REFUNDQ_REQUESTS, a JSON array of
// refund requests (default: the one below); REFUNDQ_REQUESTS_NO_KWARGS, a JSON array sent with the
// short form sendTask(name, args), which has no kwargs.
import { createClient } from "celery-node";

const broker = process.env.REFUNDQ_REDIS_URL ?? "redis://127.0.0.1:6379/0";
const requests = JSON.parse(process.env.REFUNDQ_REQUESTS ?? "null") ?? [
  {
    idempotency_key: "order-575-refund-1", // yours; the same key twice -> the same refund
    provider: "cryptomus",
    account: "cryptomus-main", // a name from the worker's accounts file
    amount: "25.00", // a decimal string; numbers are refused
    currency: "USDT",
    destination: "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL",
    fields: { order_id: "575", network: "tron" }, // provider-specific
  },
];
const shortForm = JSON.parse(process.env.REFUNDQ_REQUESTS_NO_KWARGS ?? "[]");

// The queue belongs to the client (third argument): refundq never reads celery-node's default
// queue "celery". The backend must answer too (isReady() waits for it; the default amqp:// needs a
// RabbitMQ on localhost): give the same Redis. refundq stores no results there.
const client = createClient(broker, broker, "refundq.intake");
client.conf.TASK_PROTOCOL = Number(process.env.CELERY_TASK_PROTOCOL ?? 2);

// Keyword arguments: refundq needs none; keep the object, and send it, so adding one is one line.
const kwargs = {};

await client.isReady(); // connected: each sendTask below publishes within this turn of the event loop
for (const request of requests) {
  const result = client.sendTask("refundq.intake", [request], kwargs);
  console.log(`sent ${request.idempotency_key} as task ${result.taskId}`);
}
for (const request of shortForm) {
  const result = client.sendTask("refundq.intake", [request]);
  console.log(`sent ${request.idempotency_key} as task ${result.taskId} (no kwargs)`);
}
// sendTask() returns before its message is published. Let the event loop turn once, so every
// publish is on the wire; disconnect() then waits for them (its QUIT runs after them on the same
// connection). Disconnecting or exiting right after sendTask() loses the messages.
await new Promise((resolve) => setImmediate(resolve));
await client.disconnect();
