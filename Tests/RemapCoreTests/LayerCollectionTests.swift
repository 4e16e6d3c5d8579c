import RemapCore
import Testing

/// Collecting the mapping layers no image needs any more.
@Suite struct LayerCollectionTests {
    /// A chain 1 ← 2 ← 3 (parent ← child) with `images` per layer.
    func chain(_ images: [Int]) -> [Int64: MappingLayer] {
        var layers: [Int64: MappingLayer] = [:]
        for (index, count) in images.enumerated() {
            let key = Int64(index + 1)
            layers[key] = MappingLayer(parent: index == 0 ? nil : key - 1,
                                       children: index + 1 < images.count ? [key + 1] : [], images: count)
        }
        return layers
    }

    @Test func a_layer_an_image_has_stays() {
        var layers = chain([1, 1])
        #expect(MappingLayer.collect(&layers, from: 2).isEmpty)
        #expect(layers == chain([1, 1]))
    }

    @Test func an_unknown_layer_is_nothing_to_collect() {
        var layers: [Int64: MappingLayer] = [:]
        #expect(MappingLayer.collect(&layers, from: 7).isEmpty)
    }

    @Test func a_leaf_goes_and_then_its_parent_is_looked_at() {
        // Volume deleted (3) after its snapshots (1, 2) were deleted: all go.
        var layers = chain([0, 0, 0])
        layers[1]?.children = [2]
        #expect(MappingLayer.collect(&layers, from: 3) == [.delete(3), .delete(2), .delete(1)])
        #expect(layers.isEmpty)
    }

    @Test func a_leaf_goes_up_to_a_parent_an_image_still_has() {
        var layers = chain([1, 0, 0])
        #expect(MappingLayer.collect(&layers, from: 3) == [.delete(3), .delete(2)])
        #expect(layers == [1: MappingLayer(images: 1)])
    }

    @Test func a_layer_with_one_child_takes_it_in() {
        // A deleted snapshot's layer (2) between its older snapshot (1) and the volume (3).
        var layers = chain([1, 0, 1])
        #expect(MappingLayer.collect(&layers, from: 2) == [.fold(child: 3, into: 2)])
        #expect(layers == [1: MappingLayer(children: [2], images: 1), 2: MappingLayer(parent: 1, images: 1)])
    }

    @Test func folding_repoints_grandchildren_and_carries_on() {
        // 2 takes in 3, whose child 4 now hangs under 2; the folded 2 has an image: stop.
        var layers = chain([1, 0, 1, 1])
        #expect(MappingLayer.collect(&layers, from: 2) == [.fold(child: 3, into: 2)])
        #expect(layers[4]?.parent == 2 && layers[2]?.children == [4] && layers[2]?.images == 1 && layers[3] == nil)
    }

    @Test func a_layer_with_several_children_stays() {
        // A snapshot with a volume and a clone on top: deleting the snapshot keeps its layer.
        var layers: [Int64: MappingLayer] = [1: MappingLayer(children: [2, 3]), 2: MappingLayer(parent: 1, images: 1),
                                             3: MappingLayer(parent: 1, images: 1)]
        let before = layers
        #expect(MappingLayer.collect(&layers, from: 1).isEmpty)
        #expect(layers == before)
        // Then the clone goes: its layer is deleted, and the snapshot's takes in the volume's.
        layers[3]?.images = 0
        #expect(MappingLayer.collect(&layers, from: 3) == [.delete(3), .fold(child: 2, into: 1)])
        #expect(layers == [1: MappingLayer(images: 1)])
    }
}
