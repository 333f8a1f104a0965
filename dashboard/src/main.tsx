/// <reference lib="dom" />
/**
 * Entry point of the dashboard page (bundled into dashboard/dist/app.js by
 * `deno task build:dashboard`).
 */
import { render } from "preact";
import { App } from "./app.tsx";
import { startStore } from "./store.ts";

startStore();
render(<App />, document.getElementById("app")!);
