export async function render() { document.body.textContent = "attnlab"; }
