// Keyboard shortcuts and drag-to-rank for the labelling pages. Without this file the pages still work as
// plain forms; it only adds the keys shown in <kbd> and the dragging. No dependencies.
"use strict";

function typing(target) {
  return target.closest("textarea, input[type=text], input:not([type]), input[type=password], select");
}

// Enter on a focused button or link (Sign out, say) keeps its own meaning.
function ownEnter(event) {
  return event.key === "Enter" && event.target.closest("button, a");
}

// Any element with data-key="x" is clicked when x is pressed (outside text fields).
function shortcut(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target) || ownEnter(event)) return false;
  const button = document.querySelector(`[data-key="${CSS.escape(event.key)}"]`);
  if (!button) return false;
  event.preventDefault();
  button.click();
  return true;
}

// Ctrl+Enter in a textarea marked data-submit submits its form.
function submitText(event) {
  const area = event.target.closest("textarea[data-submit]");
  if (area && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    area.form.requestSubmit();
  }
}

// Ranking: the cards' order sets ranks 1..K; a selected card takes a typed rank (ties allowed).
function setupRanking(list) {
  const cards = () => [...list.querySelectorAll(".rank-card")];
  const renumber = () => cards().forEach((card, i) => { card.querySelector("select").value = String(i + 1); });
  let selected = cards()[0];
  const select = (card) => {
    cards().forEach((c) => c.classList.toggle("selected", c === card));
    selected = card;
    card.focus();
  };
  cards().forEach((card) => {
    card.addEventListener("click", () => select(card));
    card.addEventListener("dragstart", () => card.classList.add("dragging"));
    card.addEventListener("dragend", () => { card.classList.remove("dragging"); renumber(); });
  });
  list.addEventListener("dragover", (event) => {
    event.preventDefault();
    const dragging = list.querySelector(".dragging");
    const after = cards().find((c) => c !== dragging && event.clientY < c.getBoundingClientRect().top + c.offsetHeight / 2);
    list.insertBefore(dragging, after || null);
  });
  document.addEventListener("keydown", (event) => {
    if (typing(event.target) || event.ctrlKey || event.metaKey || ownEnter(event)) return;
    const all = cards();
    const at = all.indexOf(selected);
    if (event.key === "ArrowDown" || event.key === "j") select(all[Math.min(at + 1, all.length - 1)]);
    else if (event.key === "ArrowUp" || event.key === "k") select(all[Math.max(at - 1, 0)]);
    else if (/^[1-9]$/.test(event.key) && Number(event.key) <= all.length) {
      selected.querySelector("select").value = event.key;
      select(all[Math.min(at + 1, all.length - 1)]);
    } else if (event.key === "Enter") list.closest("form").requestSubmit();
    else return;
    event.preventDefault();
  });
  select(selected);
}

// A form is sent once: a second click or key press while it is on its way does nothing.
function sendOnce(form) {
  form.addEventListener("submit", (event) => {
    if (form.dataset.sent) event.preventDefault();
    form.dataset.sent = "1";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const ranking = document.querySelector(".ranking");
  if (ranking) setupRanking(ranking);
  else document.addEventListener("keydown", shortcut);
  document.addEventListener("keydown", submitText);
  document.querySelectorAll("form.judge").forEach(sendOnce);
});
