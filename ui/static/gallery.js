// A keyboard-accessible grid of image buttons. The tile Python says is selected is
// highlighted; a click highlights the clicked tile at once and reports its key.
export default function(component) {
  const { data, setStateValue, parentElement } = component;
  let root = parentElement.querySelector('.rl-gallery');
  if (!root) {
    root = document.createElement('div');
    root.className = 'rl-gallery';
    root.setAttribute('role', 'listbox');
    parentElement.appendChild(root);
  }
  root.style.setProperty('--rl-size', (data.size || 72) + 'px');
  root.setAttribute('aria-label', data.label || 'images');
  root.replaceChildren();
  const tiles = [];
  data.items.forEach((it, i) => {
    const b = document.createElement('button');
    b.className = 'rl-tile';
    b.type = 'button';
    b.dataset.key = it.key;
    b.title = it.title;
    b.setAttribute('aria-pressed', String(it.key === data.selected));
    const img = document.createElement('img');
    img.src = it.src;
    img.alt = it.title;
    const cap = document.createElement('span');
    cap.textContent = it.caption;
    b.append(img, cap);
    b.addEventListener('click', () => {
      tiles.forEach((t) => t.setAttribute('aria-pressed', String(t === b)));
      setStateValue('selected', it.key);
    });
    b.addEventListener('keydown', (e) => {
      const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
      if (step) {
        e.preventDefault();
        e.stopPropagation();   // arrows move between tiles, not between deck slides
        tiles[(i + step + tiles.length) % tiles.length].focus();
      }
    });
    tiles.push(b);
    root.appendChild(b);
  });
}
