/**
 * `npm run typecheck` checks the dashboard against Grafana's dashboard model
 * (`@grafana/schema`). A JSON module's strings are typed `string`, so here
 * only the shape and the types of its fields are checked (a `gridPos` that is
 * a string, a variable's `current.text` that is a number, a panel without a
 * `type`); test/unit/dashboard.test.ts checks the same file as an object
 * literal, exactly: the values of string enums and unknown fields too.
 * Never run: nothing here has an effect.
 */
import dashboard from "../../deploy/grafana/dashboards/spend-buffer.json" with { type: "json" };
import type { DashboardFile, Widened } from "../support/grafana-dashboard.js";

export const checked: Widened<DashboardFile> = dashboard;
