import RemapWire

/// What commands print, in the few shapes they all share. With `--json`
/// each prints remapd's own body (a document of its own where remapd sends
/// none); without it, text for people.
extension Output {
    /// One object made or changed: `headline` (e.g. `volume vm1 resized`)
    /// and the object's details.
    static func changed<Value: Detailed>(
        _ reply: APIClient.Reply<Value>, json: Bool, headline: (Value) -> String
    ) {
        if json {
            printJSON(reply.body)
        } else {
            print(headline(reply.value) + "\n" + reply.value.details)
        }
    }

    /// Anything else remapd answered, a list most often: `text` makes of it
    /// what people read (a table).
    static func answer<Value>(_ reply: APIClient.Reply<Value>, json: Bool, text: (Value) -> String) {
        if json {
            printJSON(reply.body)
        } else {
            print(text(reply.value))
        }
    }

    /// `KIND NAME deleted`. remapd answers a delete with 204 and no body, so
    /// `--json` prints `{"deleted": NAME}` for scripts.
    static func deleted(_ kind: String, _ name: String, json: Bool) {
        if json {
            print(JSONValue.object(["deleted": .string(name)]).prettyPrinted + "\n")
        } else {
            print("\(kind) \(name) deleted\n")
        }
    }
}

extension APIClient.Reply {
    /// What an idempotent create did: `created` (201), or `exists` when
    /// remapd found the same thing there already (200).
    var outcome: String { status == 201 ? "created" : "exists" }
}
