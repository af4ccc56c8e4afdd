// Arrow keys, PageUp/PageDown (what presentation clickers send) and Esc, while no
// text field has the focus: reported to Python as the trigger value 'key'.
export default function(component) {
  const { setTriggerValue } = component;
  const onKey = (e) => {
    const t = e.target && e.target.tagName;
    if (t === 'INPUT' || t === 'TEXTAREA' || (e.target && e.target.isContentEditable)) return;
    if (['ArrowRight', 'PageDown'].includes(e.key)) setTriggerValue('key', 'next');
    if (['ArrowLeft', 'PageUp'].includes(e.key)) setTriggerValue('key', 'previous');
    if (e.key === 'Escape') setTriggerValue('key', 'exit');
  };
  document.addEventListener('keydown', onKey);
  return () => document.removeEventListener('keydown', onKey);
}
