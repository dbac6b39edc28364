#!/usr/bin/env node
// Test-only CLI for outbox-relay's SQS/SNS tests. It talks to an emulator (fauxqs) through the
// official AWS SDK for JavaScript v3, so what the tests read back is what a real consumer sees.
//
//   node consumer.mjs serve [--port N]        start fauxqs on 127.0.0.1 (port 0: kernel picks);
//                                            prints "listening PORT" once bound
//   node consumer.mjs --endpoint URL [--region R] <command> ...
//     create-queue NAME [--fifo] [--content-dedup]   prints {"QueueUrl","QueueArn"}
//     create-topic NAME [--fifo]                     prints {"TopicArn"}
//     subscribe TOPIC_ARN QUEUE_ARN [--raw]          prints {"SubscriptionArn"}
//     receive QUEUE_URL [--max N] [--wait-ms M]      prints a JSON array; deletes what it read
//     send QUEUE_URL BODY [--group G] [--dedup D] [--attr NAME=VALUE]...   prints {"MessageId"}
//     publish TOPIC_ARN BODY [--group G] [--dedup D] [--attr NAME=VALUE]... prints {"MessageId"}
//
// Errors go to stderr as one line and the exit status is 1 (2 for usage errors).

import {
  SQSClient,
  CreateQueueCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  DeleteMessageBatchCommand,
  SendMessageCommand,
} from "@aws-sdk/client-sqs";
import { SNSClient, CreateTopicCommand, SubscribeCommand, PublishCommand } from "@aws-sdk/client-sns";

class UsageError extends Error {}

// Splits argv into positionals and --options. Options listed in `flags` take no value;
// --attr may repeat and is collected into an array.
function parseArgs(argv, flags) {
  const pos = [];
  const opt = { attr: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) {
      pos.push(a);
      continue;
    }
    const name = a.slice(2);
    if (flags.has(name)) {
      opt[name] = true;
      continue;
    }
    if (i + 1 >= argv.length) throw new UsageError(`option ${a} needs a value`);
    const value = argv[++i];
    if (name === "attr") opt.attr.push(value);
    else opt[name] = value;
  }
  return { pos, opt };
}

function intOption(opt, name, dflt) {
  if (opt[name] === undefined) return dflt;
  const n = Number(opt[name]);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${name} must be a non-negative integer`);
  return n;
}

function need(pos, n, usage) {
  if (pos.length !== n) throw new UsageError(`usage: ${usage}`);
  return pos;
}

function print(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function serve(opt) {
  // fauxqs' own CLI (dist/cli.js -> startFauxqs) always listens on 0.0.0.0; the tests must
  // bind 127.0.0.1 only, so build the app with the documented buildApp() and listen ourselves.
  const { buildApp } = await import("fauxqs");
  const port = intOption(opt, "port", 0);
  const app = buildApp({ logger: opt.log === true, defaultRegion: opt.region ?? "us-east-1" });
  await app.listen({ port, host: "127.0.0.1" });
  const bound = app.server.address().port;
  process.stdout.write(`listening ${bound}\n`);
  let closing = false;
  const stop = () => {
    if (closing) return;
    closing = true;
    app.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

function clients(opt) {
  if (!opt.endpoint) throw new UsageError("--endpoint URL is required");
  // The SDK warns on every run that Node 20 support ends in 2027; the tests' stderr stays readable.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
  const config = {
    endpoint: opt.endpoint,
    region: opt.region ?? "us-east-1",
    // Static test keys: fauxqs does not verify signatures, but the SDK signs every request.
    credentials: { accessKeyId: "obr-test", secretAccessKey: "obr-test-secret" },
    maxAttempts: 1,
  };
  return { sqs: new SQSClient(config), sns: new SNSClient(config) };
}

async function createQueue(c, pos, opt) {
  let [name] = need(pos, 1, "create-queue NAME [--fifo] [--content-dedup]");
  const attributes = {};
  if (opt.fifo) {
    if (!name.endsWith(".fifo")) name += ".fifo";
    attributes.FifoQueue = "true";
    if (opt["content-dedup"]) attributes.ContentBasedDeduplication = "true";
  }
  const created = await c.sqs.send(new CreateQueueCommand({ QueueName: name, Attributes: attributes }));
  const attrs = await c.sqs.send(
    new GetQueueAttributesCommand({ QueueUrl: created.QueueUrl, AttributeNames: ["QueueArn"] }),
  );
  print({ QueueUrl: created.QueueUrl, QueueArn: attrs.Attributes.QueueArn });
}

async function createTopic(c, pos, opt) {
  let [name] = need(pos, 1, "create-topic NAME [--fifo]");
  const attributes = {};
  if (opt.fifo) {
    if (!name.endsWith(".fifo")) name += ".fifo";
    attributes.FifoTopic = "true";
  }
  const out = await c.sns.send(new CreateTopicCommand({ Name: name, Attributes: attributes }));
  print({ TopicArn: out.TopicArn });
}

async function subscribe(c, pos, opt) {
  const [topicArn, queueArn] = need(pos, 2, "subscribe TOPIC_ARN QUEUE_ARN [--raw]");
  const out = await c.sns.send(
    new SubscribeCommand({
      TopicArn: topicArn,
      Protocol: "sqs",
      Endpoint: queueArn,
      Attributes: opt.raw ? { RawMessageDelivery: "true" } : undefined,
      ReturnSubscriptionArn: true,
    }),
  );
  print({ SubscriptionArn: out.SubscriptionArn });
}

// One message as the tests see it: the body, the id, every message attribute by name
// (StringValue, or base64 BinaryValue), and the FIFO system attributes when present.
function flatten(m) {
  const attributes = {};
  for (const [name, v] of Object.entries(m.MessageAttributes ?? {})) {
    attributes[name] = {
      DataType: v.DataType,
      ...(v.StringValue !== undefined ? { StringValue: v.StringValue } : {}),
      ...(v.BinaryValue !== undefined ? { BinaryValue: Buffer.from(v.BinaryValue).toString("base64") } : {}),
    };
  }
  const out = { MessageId: m.MessageId, Body: m.Body, MessageAttributes: attributes };
  const sys = m.Attributes ?? {};
  for (const k of ["MessageGroupId", "MessageDeduplicationId", "SequenceNumber"]) {
    if (sys[k] !== undefined) out[k] = sys[k];
  }
  if (sys.ApproximateReceiveCount !== undefined) out.ApproximateReceiveCount = Number(sys.ApproximateReceiveCount);
  if (sys.SentTimestamp !== undefined) out.SentTimestamp = Number(sys.SentTimestamp);
  return out;
}

async function receive(c, pos, opt) {
  const [queueUrl] = need(pos, 1, "receive QUEUE_URL [--max N] [--wait-ms M]");
  const max = intOption(opt, "max", 10);
  const waitMs = intOption(opt, "wait-ms", 1000);
  const got = [];
  // Keep reading until `max` messages, or until the queue stayed empty for `waitMs`.
  let emptySince = Date.now();
  while (got.length < max) {
    const left = waitMs - (Date.now() - emptySince);
    if (left <= 0) break;
    const r = await c.sqs.send(
      new ReceiveMessageCommand({
        QueueUrl: queueUrl,
        MaxNumberOfMessages: Math.min(10, max - got.length),
        // Long poll in whole seconds, bounded by what is left of the quiet period.
        WaitTimeSeconds: Math.min(20, Math.floor(left / 1000)),
        VisibilityTimeout: 30,
        MessageSystemAttributeNames: ["All"],
        MessageAttributeNames: ["All"],
      }),
    );
    const msgs = r.Messages ?? [];
    if (msgs.length === 0) {
      if (left < 1000) await new Promise((res) => setTimeout(res, Math.min(left, 50)));
      continue;
    }
    emptySince = Date.now();
    for (const m of msgs) got.push(flatten(m));
    const del = await c.sqs.send(
      new DeleteMessageBatchCommand({
        QueueUrl: queueUrl,
        Entries: msgs.map((m, i) => ({ Id: String(i), ReceiptHandle: m.ReceiptHandle })),
      }),
    );
    if (del.Failed && del.Failed.length > 0) throw new Error(`delete failed: ${JSON.stringify(del.Failed)}`);
  }
  print(got);
}

// --attr NAME=VALUE options as String message attributes (undefined when there are none).
function stringAttributes(opt) {
  const attrs = {};
  for (const a of opt.attr) {
    const eq = a.indexOf("=");
    if (eq <= 0) throw new UsageError(`--attr wants NAME=VALUE, got ${a}`);
    attrs[a.slice(0, eq)] = { DataType: "String", StringValue: a.slice(eq + 1) };
  }
  return Object.keys(attrs).length ? attrs : undefined;
}

async function send(c, pos, opt) {
  const [queueUrl, body] = need(pos, 2, "send QUEUE_URL BODY [--group G] [--dedup D] [--attr NAME=VALUE]...");
  const out = await c.sqs.send(
    new SendMessageCommand({
      QueueUrl: queueUrl,
      MessageBody: body,
      MessageAttributes: stringAttributes(opt),
      MessageGroupId: opt.group,
      MessageDeduplicationId: opt.dedup,
    }),
  );
  print({ MessageId: out.MessageId });
}

async function publish(c, pos, opt) {
  const [topicArn, body] = need(pos, 2, "publish TOPIC_ARN BODY [--group G] [--dedup D] [--attr NAME=VALUE]...");
  const out = await c.sns.send(
    new PublishCommand({
      TopicArn: topicArn,
      Message: body,
      MessageAttributes: stringAttributes(opt),
      MessageGroupId: opt.group,
      MessageDeduplicationId: opt.dedup,
    }),
  );
  print({ MessageId: out.MessageId });
}

const commands = {
  "create-queue": createQueue,
  "create-topic": createTopic,
  subscribe,
  receive,
  send,
  publish,
};

async function main() {
  const { pos, opt } = parseArgs(process.argv.slice(2), new Set(["fifo", "raw", "content-dedup", "log"]));
  const [cmd, ...rest] = pos;
  if (cmd === "serve") return serve(opt);
  const fn = commands[cmd];
  if (!fn) throw new UsageError(`unknown command ${cmd ?? "(none)"}; one of: serve, ${Object.keys(commands).join(", ")}`);
  const c = clients(opt);
  try {
    await fn(c, rest, opt);
  } finally {
    c.sqs.destroy();
    c.sns.destroy();
  }
}

main().catch((err) => {
  const name = err?.name && err.name !== "Error" ? `${err.name}: ` : "";
  process.stderr.write(`consumer.mjs: ${name}${err?.message ?? err}\n`);
  process.exit(err instanceof UsageError ? 2 : 1);
});
