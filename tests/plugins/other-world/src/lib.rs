//! A component for another world (`acme:greeter`): it has a `describe`
//! export of the wrong type, lacks the other exports and imports an
//! interface the gateway does not provide.

wit_bindgen::generate!({ path: "wit", world: "greeter" });

struct Greeter;

impl Guest for Greeter {
    fn describe() -> String {
        "greeter".into()
    }
    fn greet(name: String) -> String {
        format!("hello {name} at {}", acme::greeter::clock::now())
    }
}

export!(Greeter);
