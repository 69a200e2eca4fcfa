/*! Types of the sidewire browser client, served by sidewire at {prefix}/client.d.ts next
 * to {prefix}/client.js (default /_sidewire/client.js).
 *
 * client.js is a plain script that sets the global `Sidewire` (and `module.exports` under
 * CommonJS), so this file declares both: save it as e.g. `types/sidewire.d.ts` and use
 * `Sidewire.Client` in scripts, or `import { Client } from "./sidewire"` with a bundler.
 */

export as namespace Sidewire;

/** Version of the client's API. */
export declare const version: string;

/** Any JSON value: message `data`, presence `info`, a backend `reply`. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** "websocket" first, then "sse", then "longpoll" when the one before is blocked or missing. */
export type Transport = "websocket" | "sse" | "longpoll";

export type State = "connecting" | "open" | "closed";

export interface ClientOptions {
  /** WebSocket route (default "/ws"); null skips WebSocket. Relative to the page. */
  url?: string | null;
  /** SSE route (default "/events"); null skips SSE. */
  sse?: string | null;
  /** Long-poll route (default "/poll"); null skips long-poll. */
  poll?: string | null;
  /** Sent as `?{tokenParam}=`; a function is called on every (re)connect. On the same
   *  origin a session cookie needs no token. */
  token?: string | null | (() => string | null | undefined);
  /** Query parameter of the token (default "token"; sidewire's `auth.token_query`). */
  tokenParam?: string;
}

/** A message as a subscription's handler gets it. */
export interface Message<T = Json> {
  channel: string;
  /** "<epoch>.<seq>"; undefined for ephemeral events (delivered live only). */
  id: string | undefined;
  /** The event name, undefined when the message has none. */
  event: string | undefined;
  data: T;
  /** Present only on messages a client published: the sender as sidewire knows it
   *  (stamped by sidewire, never taken from the client), null for an anonymous sender.
   *  Absent on backend publishes, and on messages received over SSE. */
  user?: string | null;
}

/** One user present on a presence channel (once per user, not per connection). */
export interface Member {
  user: string;
  /** The user's connections on the channel. Exact in a server snapshot (`subscribed`,
   *  `presence()` on WebSocket); a user first seen through `join` counts as 1. */
  connections: number;
  /** The `info` the backend's auth answer gave for this user (e.g. a display name). */
  info: Json;
}

/** Why a member list changed: a server snapshot, a join or a leave. */
export type PresenceChange =
  | { type: "sync" }
  | { type: "join"; user: string; info: Json }
  | { type: "leave"; user: string };

export interface PresenceEvent {
  channel: string;
  /** The whole tracked list after the change, sorted by user. */
  members: Member[];
  change: PresenceChange;
}

export interface SubscribeOptions {
  /** false: this connection does not receive the messages it publishes itself on the
   *  channel (sent as `"echo": false` on every subscribe, reconnects included). Echo is
   *  one setting per channel and connection: it is off only while every subscription of
   *  the channel asks for false. Default true. */
  echo?: boolean;
  /** The channel's member list changed (presence channels): called once when it is
   *  first known, then on every change. */
  presence?: (event: PresenceEvent) => void;
}

/** The `published` reply. */
export interface Published {
  channel: string;
  /** The new message's id (null for an ephemeral event, or when a backend that decides
   *  client publishes published nothing). */
  id: string | null;
  /** The backend's `reply` on `client_publish: backend` channels. */
  reply?: Json;
}

export interface StateEvent {
  state: State;
  transport: Transport;
}

export interface WelcomeEvent {
  /** null: anonymous. */
  user: string | null;
  connection: string;
  transport: "websocket";
}

export interface SubscribedEvent {
  channel: string;
  transport: Transport;
}

export interface ResetEvent {
  /** Channels whose gap history could not fill: refetch their state. */
  channels: string[];
  transport: Transport;
}

export interface ErrorEvent {
  /** A server error code (`forbidden`, `unknown_channel`, …) or, when the client stops,
   *  `auth_required`, `invalid_token`, `forbidden`, or an SSE / long-poll refusal. */
  code: string;
  message: string;
  /** The channel a refused subscribe named (WebSocket). */
  channel?: string;
  transport: Transport;
}

export interface JoinEvent {
  channel: string;
  user: string;
  info: Json;
}

export interface LeaveEvent {
  channel: string;
  user: string;
}

export interface ClientEvents {
  state: StateEvent;
  /** Every WebSocket `welcome` (each reconnect): `client.user` and `client.connection` are set. */
  welcome: WelcomeEvent;
  subscribed: SubscribedEvent;
  reset: ResetEvent;
  /** Refused requests, and the reason when the client stops for good. */
  error: ErrorEvent;
  /** Every `join` received, also on channels without a subscription's presence callback. */
  join: JoinEvent;
  leave: LeaveEvent;
  /** A subscribed channel's member list changed. */
  presence: PresenceEvent;
}

export declare class Client {
  /** Connects on the next tick, so `on` and `subscribe` calls made right after share the
   *  first connection. Throws when no transport is usable. */
  constructor(options?: ClientOptions);

  /** Current transport; a fallback lasts for the client's lifetime. */
  readonly transport: Transport;
  readonly state: State;
  /** The user sidewire knows this client as (null: anonymous), from the WebSocket's
   *  `welcome`: null until the first one, then kept while reconnecting. Never set over
   *  SSE / long-poll, which have no `welcome`. */
  readonly user: string | null;
  /** The open WebSocket's connection id (from `welcome`), null while there is none (and
   *  always over SSE / long-poll). */
  readonly connection: string | null;

  /** Calls `handler` for every message on `channel`, once per id, resuming from the last
   *  id after reconnects. Returns the unsubscribe function. */
  subscribe<T = Json>(channel: string, handler: (message: Message<T>) => void, options?: SubscribeOptions): () => void;

  /** Publishes over the WebSocket (rejected on SSE / long-poll); resolves with the reply.
   *  A publish sent on a connection that is then lost is rejected (outcome unknown). */
  publish(channel: string, data: Json | undefined, event?: string): Promise<Published>;

  /** The tracked members of a subscribed presence channel, sorted by user; empty while
   *  unknown. Kept up to date by `join`/`leave`; over SSE / long-poll it holds only the
   *  users seen joining since the stream opened. */
  members(channel: string): Member[];

  /** Asks the server for a presence channel's members (WebSocket, sent again after a
   *  reconnect); over SSE / long-poll resolves with `members(channel)`. Rejects with the
   *  server's error (`error.code`), e.g. `bad_request` where presence is not enabled. */
  presence(channel: string): Promise<Member[]>;

  /** Listens to a client event; returns the remover. */
  on<K extends keyof ClientEvents>(event: K, listener: (event: ClientEvents[K]) => void): () => void;

  /** Stops for good: no reconnect; pending requests are rejected. */
  close(): void;
}
