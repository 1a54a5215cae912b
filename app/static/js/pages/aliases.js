// Aliases on the models pages: badges in the list, and on a model's page the aliases that point to it
// ("Roll back") and a "Publish as…" form that creates or moves an alias to this model.

import { api, items } from "../api.js";
import { h, notify, notifyError, setError } from "../ui.js";

const NAME_PATTERN = "^[a-z][a-z0-9_-]{0,39}$"; // the API checks it too (422); here it guides the input

/** Every alias, or [] when they can't be read (the pages still work without them). */
export async function loadAliases(signal) {
  try {
    return items(await api.get("aliases", { signal }));
  } catch (err) {
    notifyError(err, "Could not read the aliases");
    return [];
  }
}

/** The names of the aliases that point to `modelId`, as badges. */
export function aliasBadges(modelId, aliases) {
  const names = aliases.filter((a) => a.model_id === modelId).map((a) => a.name);
  return h("span", { class: "aliases", "data-testid": "model-aliases" }, ...names.map((name) => h("span", { class: "badge" }, name)));
}

function rollbackButton(alias, onChange) {
  const button = h("button", { type: "button", class: "btn", "data-testid": `alias-rollback-${alias.name}` }, "Roll back");
  button.disabled = (alias.history || []).length < 2;
  button.title = button.disabled ? "It never pointed to another model" : "Point it back to its previous model";
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const moved = await api.post(`aliases/${encodeURIComponent(alias.name)}/rollback`);
      notify(`Alias ${alias.name} points to ${moved.model_id} again.`, "success");
      onChange();
    } catch (err) {
      notifyError(err, "Could not roll back");
      button.disabled = false;
    }
  });
  return button;
}

function publishForm(model, onChange) {
  const input = h("input", { id: "alias-name", name: "alias", required: true, pattern: NAME_PATTERN, placeholder: "production", "data-testid": "alias-name" });
  const error = h("div", { "data-testid": "alias-error" });
  const form = h(
    "form",
    { class: "inline-form", "data-testid": "alias-form" },
    h("label", { for: "alias-name" }, "Publish as…"),
    input,
    h("button", { type: "submit", class: "btn btn-primary", "data-testid": "alias-publish" }, "Publish"),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setError(error, null);
    try {
      await api.put(`aliases/${encodeURIComponent(input.value)}`, { model_id: model.id });
      notify(`Alias ${input.value} now points to this model.`, "success");
      onChange();
    } catch (err) {
      setError(error, err, "alias-error");
    }
  });
  return form;
}

/** The aliases card of a model's page; `onChange` reloads the page after a move. */
export function aliasPanel(model, aliases, onChange) {
  const mine = aliases.filter((a) => a.model_id === model.id);
  const rows = mine.map((alias) =>
    h("li", { "data-testid": "alias-row", "data-name": alias.name }, h("code", {}, alias.name), " ", rollbackButton(alias, onChange)),
  );
  return h(
    "section",
    { class: "card", "aria-labelledby": "aliases-title", "data-testid": "model-aliases-card" },
    h("h2", { id: "aliases-title" }, "Aliases"),
    mine.length ? h("ul", {}, ...rows) : h("p", { class: "muted" }, "No alias points to this model. /predict without a model_id uses the alias “default”, else the newest model."),
    publishForm(model, onChange),
  );
}
