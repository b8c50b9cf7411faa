//! The little EC2's XML answers need: elements by local name (the namespace
//! varies between EC2, STS and compatible endpoints), their text.

use roxmltree::Node;

/// The first descendant of `n` named `name`.
pub fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.descendants()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

/// The direct children of `n` named `name`.
pub fn children<'a, 'i>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    n.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// The text of the first descendant named `name`.
pub fn text(n: Node, name: &str) -> Option<String> {
    child(n, name).and_then(|c| c.text()).map(str::to_string)
}

/// The text of a direct child named `name`.
pub fn own(n: Node, name: &str) -> Option<String> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
        .and_then(|c| c.text())
        .map(str::to_string)
}

/// `<tagSet><item><key>k</key><value>v</value></item>…</tagSet>` as pairs.
pub fn tags(n: Node) -> std::collections::BTreeMap<String, String> {
    let Some(set) = n
        .children()
        .find(|c| c.is_element() && c.tag_name().name() == "tagSet")
    else {
        return Default::default();
    };
    children(set, "item")
        .filter_map(|i| Some((own(i, "key")?, own(i, "value").unwrap_or_default())))
        .collect()
}
