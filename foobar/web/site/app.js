// The board's page: list, post and like through /api/, and show which servers answered.
"use strict";

const postsList = document.getElementById("posts");
const servedRows = document.getElementById("served");
const moreButton = document.getElementById("more");
const emptyNote = document.getElementById("empty");
const form = document.getElementById("compose");
const formError = document.getElementById("form-error");
let nextBefore = null;

// Every API call goes through here: it records who served it in the table.
async function api(method, path, body) {
  const started = performance.now();
  const options = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.headers["Idempotency-Key"] = crypto.randomUUID ? crypto.randomUUID() : String(Math.random());
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  recordServed(`${method} ${path}`, response, performance.now() - started);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const fields = Array.isArray(data.detail) ? data.detail.map((d) => `${d.field}: ${d.message}`).join("; ") : "";
    throw new Error(fields || data.message || `${response.status} ${data.error || "error"}`);
  }
  return data;
}

function recordServed(label, response, ms) {
  const row = document.createElement("tr");
  const db = response.headers.get("X-Foobar-DB") || "-";
  const cells = [label, response.headers.get("X-Foobar-LB") || "-", response.headers.get("X-Foobar-Web") || "-",
    response.headers.get("X-Foobar-App") || "-", db, String(response.status), ms.toFixed(0)];
  for (const text of cells) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.appendChild(cell);
  }
  row.children[4].className = `db-${db}`;
  servedRows.prepend(row);
  while (servedRows.children.length > 6) servedRows.lastChild.remove();
}

function renderPost(post) {
  const item = document.createElement("li");
  item.className = "post";
  item.dataset.id = post.id;
  const title = document.createElement("h3");
  title.textContent = post.title;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `${post.author} · ${new Date(post.created_at).toLocaleString()}`;
  const body = document.createElement("p");
  body.textContent = post.body;
  const like = document.createElement("button");
  like.className = "like";
  like.type = "button";
  like.textContent = `♥ ${post.likes}`;
  like.addEventListener("click", async () => {
    like.disabled = true;
    try {
      const result = await api("POST", `/api/posts/${post.id}/likes`);
      like.textContent = `♥ ${result.likes}`;
    } catch (error) {
      like.title = error.message;
    } finally {
      like.disabled = false;
    }
  });
  item.append(title, meta, body, like);
  return item;
}

async function loadPosts(append) {
  const query = append && nextBefore ? `?before=${nextBefore}` : "";
  const page = await api("GET", `/api/posts${query}`);
  if (!append) postsList.replaceChildren();
  for (const post of page.posts) postsList.appendChild(renderPost(post));
  nextBefore = page.next_before;
  moreButton.hidden = nextBefore === null;
  emptyNote.hidden = postsList.children.length > 0;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  formError.hidden = true;
  const submit = form.querySelector("button");
  submit.disabled = true;
  const fields = Object.fromEntries(new FormData(form).entries());
  try {
    const post = await api("POST", "/api/posts", fields);
    form.reset();
    // read it back at once: the GTID cookie makes whichever app server answers see it
    const stored = await api("GET", `/api/posts/${post.id}`);
    postsList.prepend(renderPost(stored));
    emptyNote.hidden = true;
  } catch (error) {
    formError.textContent = error.message;
    formError.hidden = false;
  } finally {
    submit.disabled = false;
  }
});

moreButton.addEventListener("click", () => loadPosts(true));
loadPosts(false).catch((error) => {
  emptyNote.textContent = `Could not load posts: ${error.message}`;
  emptyNote.hidden = false;
});
