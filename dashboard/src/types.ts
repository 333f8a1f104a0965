/**
 * The wire types of the dashboard's event stream, shared with the server side (type-only
 * imports: the bundle carries none of the server's code).
 */
export type { InstanceView, QueuedView, ServerView } from "../../lib/inspect.ts";
export type { SnapshotPayload } from "../../lib/dashboard/feed.ts";

/** Payload of the `removed` event: the server was killed. */
export interface RemovedPayload {
  id: string;
}

/** Payload of the `unreadable` event: reading the server's view failed. */
export interface UnreadablePayload {
  id: string;
  message: string;
}
